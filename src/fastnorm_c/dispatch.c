/*
 * dispatch.c - which kernel family runs: the compiled tables, the CPU's support for them,
 * and the one active-table pointer every entry point (api_*.c) reads; and the tuning (AMD's
 * cores or the default), chosen with it.
 *
 * Compiled at the x86-64 baseline, like everything outside the kernel TUs: this file runs
 * before we know what the CPU supports, so it must not contain a single AVX instruction.
 *
 * The choice is made once: the first call of any function here (fastnorm._core makes it
 * at import, under the GIL) probes the CPU and selects the best of compiled and supported,
 * avx512 > avx2 > scalar, the avx512 family in its AVX512-BF16 build where the CPU has
 * that extension.  fastnorm_set_isa replaces it; entry points load the pointer
 * once per call, so a switch never mixes two families inside one call.  Both the probe
 * result and the pointer are atomics: a C caller may race the first use or a set_isa
 * from several threads, and every racer computes the same value anyway.
 */
#if (defined(__AVX__) || defined(__AVX2__) || defined(__AVX512F__)) && !defined(FASTNORM_ALLOW_AVX_BASELINE)
#error "dispatch.c must be compiled without AVX flags (it runs before the CPU check). \
Remove -mavx*/-march from CFLAGS, or define FASTNORM_ALLOW_AVX_BASELINE if every target CPU has AVX."
#endif

#include <stddef.h>
#include <stdio.h>  /* sysfs: the cache sizes */
#include <stdlib.h> /* atoi */
#include <string.h>
#if defined(__unix__) || defined(__APPLE__)
#include <unistd.h> /* sysconf */
#endif
#ifdef _OPENMP
#include <omp.h>
#endif
#if defined(_OPENMP) && !defined(_WIN32) /* fork: POSIX only */
#define FN_FORK_GUARD 1
#include <pthread.h>
#endif
#include "kernels.h"

#if defined(__STDC_NO_ATOMICS__) || (defined(_MSC_VER) && !defined(__clang__))
/* No C11 atomics (MSVC's are experimental): plain aligned loads/stores, which are atomic
 * on every platform this builds on; the values written are idempotent. */
typedef const fastnorm_kernels_t *volatile fn_table_slot;
typedef volatile int fn_int_slot;
#define FN_LOAD(slot) (slot)
#define FN_STORE(slot, value) ((slot) = (value))
#else
#include <stdatomic.h>
typedef const fastnorm_kernels_t *_Atomic fn_table_slot;
typedef _Atomic int fn_int_slot;
#define FN_LOAD(slot) atomic_load_explicit(&(slot), memory_order_acquire)
#define FN_STORE(slot, value) atomic_store_explicit(&(slot), (value), memory_order_release)
#endif

/* Compiled tables, indexed by fastnorm_isa_t; NULL where setup.py did not build the TU. */
static const fastnorm_kernels_t *const tables_[FASTNORM_ISA_COUNT] = {
    &fastnorm_kernels_scalar,
#ifdef FASTNORM_HAVE_AVX2
    &fastnorm_kernels_avx2,
#else
    NULL,
#endif
#ifdef FASTNORM_HAVE_AVX512
    &fastnorm_kernels_avx512,
#else
    NULL,
#endif
};

static const char *const isa_names_[FASTNORM_ISA_COUNT] = {"scalar", "avx2", "avx512"};

/* The avx512 family's build with AVX512-BF16 (kernels_avx512bf16.c), NULL if not built. */
static const fastnorm_kernels_t *const avx512_bf16_table_ =
#if defined(FASTNORM_HAVE_AVX512) && defined(FASTNORM_HAVE_AVX512BF16)
    &fastnorm_kernels_avx512bf16;
#else
    NULL;
#endif

/* Bit i set: family i is compiled and the CPU/OS run it; FN_AVX512_BF16_BIT: so does
 * avx512_bf16_table_.  FN_PROBED marks "computed". */
#define FN_PROBED (1 << 30)
#define FN_AVX512_BF16_BIT (1 << 8)
static fn_int_slot supported_mask_ = 0;
static fn_table_slot active_ = NULL;
static fn_int_slot avx512_bf16_off_ = 0; /* fastnorm_set_avx512_bf16(0) */

static int valid_isa_(fastnorm_isa_t isa) { return (unsigned)isa < FASTNORM_ISA_COUNT; }

static int supported_mask_get_(void) {
    int mask = FN_LOAD(supported_mask_);
    if (!(mask & FN_PROBED)) {
        mask = FN_PROBED;
        for (int isa = 0; isa < FASTNORM_ISA_COUNT; ++isa)
            if (tables_[isa] && (isa == FASTNORM_ISA_SCALAR || fastnorm_cpu_has((fastnorm_isa_t)isa)))
                mask |= 1 << isa;
        if (avx512_bf16_table_ && (mask >> FASTNORM_ISA_AVX512 & 1) && fastnorm_cpu_has_avx512_bf16())
            mask |= FN_AVX512_BF16_BIT;
        FN_STORE(supported_mask_, mask);
    }
    return mask;
}

/* The table that runs family isa (supported). */
static const fastnorm_kernels_t *family_table_(fastnorm_isa_t isa) {
    return isa == FASTNORM_ISA_AVX512 && fastnorm_avx512_bf16_enabled() ? avx512_bf16_table_ : tables_[isa];
}

int fastnorm_isa_compiled(fastnorm_isa_t isa) { return valid_isa_(isa) && tables_[isa] != NULL; }

int fastnorm_isa_supported(fastnorm_isa_t isa) {
    return valid_isa_(isa) && (supported_mask_get_() >> isa & 1);
}

fastnorm_isa_t fastnorm_best_isa(void) {
    int mask = supported_mask_get_();
    for (int isa = FASTNORM_ISA_COUNT - 1; isa > 0; --isa)
        if (mask >> isa & 1) return (fastnorm_isa_t)isa;
    return FASTNORM_ISA_SCALAR;
}

#ifdef __linux__
/* The first line of cpu0's cache description `name` for cache `index` into buf, or 0. */
static int sysfs_cache_field_(int index, const char *name, char *buf, int size) {
    char path[64];
    snprintf(path, sizeof path, "/sys/devices/system/cpu/cpu0/cache/index%d/%s", index, name);
    FILE *f = fopen(path, "r");
    if (!f) return 0;
    int ok = fgets(buf, size, f) != NULL;
    fclose(f);
    return ok;
}
#endif

/* The size in KB of the highest-level data or unified cache cpu0 has, as Linux describes it
 * in sysfs (the cache these cores share), 0 where it has no such cache or no sysfs. */
static int llc_kb_sysfs_(void) {
    int best_kb = 0;
#ifdef __linux__
    int best_level = 0;
    char level[16], type[32], size[32];
    for (int index = 0; sysfs_cache_field_(index, "level", level, sizeof level); ++index) {
        int kb = 0;
        char unit = 'K';
        if (!sysfs_cache_field_(index, "type", type, sizeof type) ||
            !sysfs_cache_field_(index, "size", size, sizeof size) ||
            strncmp(type, "Instruction", 11) == 0 || sscanf(size, "%d%c", &kb, &unit) < 1 ||
            kb <= 0 || atoi(level) < best_level)
            continue;
        best_level = atoi(level);
        best_kb = unit == 'M' ? kb * 1024 : kb;
    }
#endif
    return best_kb;
}

/* The last-level cache's size in KB, 0 where nothing says; asked once, as a CPUID in a VM
 * can cost a microsecond and the sysfs reads several.  sysfs first: glibc's sysconf
 * reports what CPUID says of the whole package, which on an AMD EPYC Zen 3 VM is 256 MB,
 * eight times the 32 MB L3 its cores share (sysfs and lscpu: 32 MB), and that put the
 * streaming bound at 16 MB there. */
static fn_int_slot llc_kb_ = -1;

size_t fastnorm_llc_bytes(void) {
    int kb = FN_LOAD(llc_kb_);
    if (kb < 0) {
        long bytes = 0;
        kb = llc_kb_sysfs_();
#ifdef _SC_LEVEL3_CACHE_SIZE
        if (kb <= 0) bytes = sysconf(_SC_LEVEL3_CACHE_SIZE);
#endif
        if (kb <= 0) kb = bytes > 0 ? (int)(bytes / 1024) : 0;
        FN_STORE(llc_kb_, kb);
    }
    return (size_t)kb * 1024;
}

/* The tuning: a few sizes and hints that AMD's cores and Intel's want differently (rows a
 * row ahead, kernels.h's ahead_row_max; store hints, below; the center hand-off,
 * api_internal.h; streamed row groups and the statistics' prefetch, api_norm.c), chosen
 * from the vendor, as the family is from the CPU's extensions.  fastnorm_store_hints is
 * a plain int: the kernels read it at every hint, and a stale value only moves a hint. */
static fn_int_slot tuning_ = -1;
int fastnorm_store_hints = 1;

static void tuning_store_(fastnorm_tuning_t tuning) {
    /* Plain stores ask for their lines ahead on Intel's Xeons (kernel_row_normalize.h,
     * KB_STORE_AHEAD), where a store waited for its line; on Zen 4 the hints took a load
     * slot each and cost more than they saved (the same place). */
    fastnorm_store_hints = tuning != FASTNORM_TUNING_AMD;
    FN_STORE(tuning_, (int)tuning);
}

fastnorm_tuning_t fastnorm_tuning(void) {
    int tuning = FN_LOAD(tuning_);
    if (tuning < 0) {
        tuning = fastnorm_cpu_amd() ? FASTNORM_TUNING_AMD : FASTNORM_TUNING_DEFAULT;
        tuning_store_((fastnorm_tuning_t)tuning);
    }
    return (fastnorm_tuning_t)tuning;
}

fastnorm_status_t fastnorm_set_tuning(fastnorm_tuning_t tuning) {
    if ((unsigned)tuning >= FASTNORM_TUNING_COUNT) return FASTNORM_ERR_BAD_VALUE;
    tuning_store_(tuning);
    return FASTNORM_OK;
}

const fastnorm_kernels_t *fastnorm_active_kernels(void) {
    const fastnorm_kernels_t *table = FN_LOAD(active_);
    if (!table) {
        table = family_table_(fastnorm_best_isa());
        fastnorm_tuning(); /* chosen before the first kernel reads fastnorm_store_hints */
        FN_STORE(active_, table);
    }
    return table;
}

fastnorm_isa_t fastnorm_get_isa(void) {
    const fastnorm_kernels_t *table = fastnorm_active_kernels();
    for (int isa = 0; isa < FASTNORM_ISA_COUNT; ++isa)
        if (tables_[isa] == table) return (fastnorm_isa_t)isa;
    if (table == avx512_bf16_table_) return FASTNORM_ISA_AVX512;
    return FASTNORM_ISA_SCALAR; /* unreachable: the active table is always one of tables_ */
}

fastnorm_status_t fastnorm_set_isa(fastnorm_isa_t isa) {
    if (!valid_isa_(isa)) return FASTNORM_ERR_BAD_VALUE;
    if (!fastnorm_isa_supported(isa)) return FASTNORM_ERR_ISA_UNAVAILABLE;
    FN_STORE(active_, family_table_(isa));
    return FASTNORM_OK;
}

int fastnorm_avx512_bf16_supported(void) { return !!(supported_mask_get_() & FN_AVX512_BF16_BIT); }

int fastnorm_avx512_bf16_enabled(void) {
    return fastnorm_avx512_bf16_supported() && !FN_LOAD(avx512_bf16_off_);
}

fastnorm_status_t fastnorm_set_avx512_bf16(int enabled) {
    if (enabled && !fastnorm_avx512_bf16_supported()) return FASTNORM_ERR_ISA_UNAVAILABLE;
    FN_STORE(avx512_bf16_off_, !enabled);
    if (fastnorm_get_isa() == FASTNORM_ISA_AVX512) FN_STORE(active_, family_table_(FASTNORM_ISA_AVX512));
    return FASTNORM_OK;
}

const char *fastnorm_isa_name(fastnorm_isa_t isa) { return valid_isa_(isa) ? isa_names_[isa] : "unknown"; }

int fastnorm_openmp_enabled(void) {
#ifdef _OPENMP
    return 1;
#else
    return 0;
#endif
}

/* ---- team size, and threads after a fork --------------------------------------------
 * At most FASTNORM_MAX_TEAM threads a call: set_num_threads(100000) or OMP_NUM_THREADS=100000
 * made GNU OpenMP crash (a segfault; from about 30000 on this 2-vCPU VM it exits with
 * "Thread creation failed"), and a call has no use for more threads than CPUs.
 *
 * GNU OpenMP keeps its worker threads for the life of the process, and a fork copies only
 * the forking thread: a child forked after its parent ran a team (a multiprocessing worker
 * of a data pipeline, say) waits forever in its first parallel region.  Such a child runs
 * every call on one thread; the results are the same bits, since they never depend on the
 * thread count.  A grandchild inherits the flag. */
#ifdef FN_FORK_GUARD
static fn_int_slot team_started_, forked_after_team_;

static void at_fork_child_(void) {
    if (FN_LOAD(team_started_)) FN_STORE(forked_after_team_, 1);
}
#endif

int fastnorm_thread_limit(void) {
#ifdef FN_FORK_GUARD
    return FN_LOAD(forked_after_team_) ? 1 : FASTNORM_MAX_TEAM;
#elif defined(_OPENMP)
    return FASTNORM_MAX_TEAM;
#else
    return 1;
#endif
}

int fastnorm_team_threads(int threads) {
    int limit = fastnorm_thread_limit();
    if (threads > limit) threads = limit;
#ifdef FN_FORK_GUARD
    if (threads > 1 && !FN_LOAD(team_started_)) { /* racers may register twice: harmless */
        FN_STORE(team_started_, 1);
        pthread_atfork(NULL, NULL, at_fork_child_);
    }
#endif
    return threads < 1 ? 1 : threads;
}

/* Read at call time, so OMP_NUM_THREADS and threadpoolctl's limits apply. */
int fastnorm_default_threads(void) {
#ifdef _OPENMP
    return omp_get_max_threads();
#else
    return 1;
#endif
}
