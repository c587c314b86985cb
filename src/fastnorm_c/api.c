/*
 * api.c - the public entry points of fastnorm.h: validate every argument, then cut the
 * work into items, run them on OpenMP threads through the active kernel table, and merge
 * partial statistics with Chan's formula.
 *
 * Two layouts cover every operation:
 *   row path     the reduced values of one statistic are contiguous (LayerNorm over the
 *                last axis, BatchNorm NCHW per (sample, channel) row, GroupNorm groups);
 *   column path  they are strided and the statistics are side by side in memory
 *                (LayerNorm over a non-trailing axis, BatchNorm channels-last).  Narrow
 *                blocks are regrouped as k rows per "super-row" so a vector is always full.
 * Work items are fixed by the problem size, never by the thread count, and partials are
 * merged in index order: results are bitwise identical for any number of threads.
 * Compiled at the baseline (no ISA flags): it calls kernels only through the table.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif
#include "kernels.h"
#include "storage.h"

/* Below this many elements a call runs on one thread: waking a team costs more than it
 * saves (see docs/performance.md for the measurement). */
#define FN_PARALLEL_MIN_ELEMENTS 32768
/* Rows longer than this are reduced in segments, so one long row still uses every thread. */
#define FN_ROW_SEGMENT 16384
/* Long rows take both passes a batch of rows of about this many bytes at a time (measured
 * against 256 KB and 4 MB: see fn_norm_long_rows). */
#define FN_LONG_ROW_BATCH_BYTES (1u << 20)
/* The normalize pass of a row at most FN_PREFETCH_MAX_BYTES long prefetches the next row for
 * the statistics pass when the input has at least FN_PREFETCH_MIN_BYTES.  Measured (AVX2,
 * Zen 3, 1 thread, ctypes A/B): 4096x768 float32 (12 MB) LayerNorm and RMSNorm 0.78-0.82x
 * the time with it; 512x768 (1.5 MB, which the hardware prefetcher keeps up with) 1.04-1.10x;
 * a slight loss for 16 KB rows.  Only for the families whose table sets prefetch_next
 * (simd_<family>.h): on Zen 4 the AVX-512 family is faster without. */
#define FN_PREFETCH_MAX_BYTES 8192
#define FN_PREFETCH_MIN_BYTES (4u << 20)
/* Below FN_PREFETCH_MIN_BYTES, rows of at most FN_AHEAD_MAX_BYTES take their statistics one
 * row ahead: row r + 1's statistics run before row r's normalize pass, so the latency of
 * row r's division and square root (about 50 cycles with nothing else to do) overlaps
 * them.  Measured (Zen 4, AVX-512, `python -m fastnorm bench --out`, two runs each,
 * alternating builds), time per call: LayerNorm 64x768 0.87-0.93x, 512x768 0.89-0.94x
 * (2 threads 0.84-0.92x), 1024x768 0.94-0.97x; RMSNorm 64x768 0.85-0.86x, 512x768
 * 0.79-0.89x.  It lost for 8 KB rows (two rows and an output no longer fit the L1 cache:
 * 128x2048 1.2x) and for inputs past the last-level cache's easy reach (4096x768, 12 MB:
 * 1.4x in a tight loop). */
#define FN_AHEAD_MAX_BYTES 4096
/* fn_moments_rows gathers rows of at most FN_GATHER_ROW_BYTES into spans of FN_GATHER_BYTES
 * (a stack buffer of each thread) before their statistics. */
#define FN_GATHER_ROW_BYTES 2048
#define FN_GATHER_BYTES 16384
/* Rows (the `inner` values of one channel in one sample) shorter than these take the
 * column path, which treats each of the channels * inner positions as a column: the
 * statistics for rows under 16 values, the affine for rows under 48.  Measured (ctypes
 * A/B, 1 thread, Zen 3): statistics of 49-value rows (7x7 feature maps) 0.32-0.63x the
 * time on the row path, 16-value rows 0.33-0.71x, 8-value rows even; the affine of
 * 49-value rows 0.38-0.95x, but of 16- and 32-value rows 1.1-1.9x. */
#define FN_MOMENTS_ROW_MIN 16
#define FN_AFFINE_ROW_MIN 48
/* Columns per work item when a norm reduces over a non-trailing axis. */
#define FN_COLUMN_CHUNK 256
/* Elements per work item on the column path of moments / affine, and at least
 * FN_COLUMN_MIN_ROWS rows where that leaves four items: the statistics read each row a
 * strip (128 bytes) at a time, and a longer strided stream keeps the hardware prefetcher
 * ahead (fastnorm_moments (1568, 256) 0.81-0.85x the time, (784, 512) 0.71-0.77x). */
#define FN_COLUMN_ITEM_ELEMENTS 16384
#define FN_COLUMN_MIN_ROWS 256
/* Rows that with their weight and bias take more than FN_GROUP_MIN_BYTES take their
 * normalize pass in groups of up to FN_GROUP_ROWS rows, a block of FN_PARAM_BLOCK columns
 * at a time across the group (fn_norm_row_group).  Why: a row of 4096 float32 values with
 * its weight and bias is 48 KB, past the 32 KB L1 of Zen 3 and Zen 4, so each row read
 * both parameters again from L2; in groups the row itself is read again instead, and the
 * parameters once per group.  Measured (in-process A/B, LayerNorm, time per call, float32
 * / bfloat16, 1 thread): 128x4096 0.82-0.90 / 0.92-1.07, 1024x4096 0.78 / 0.87, 8192x4096
 * 0.86-0.88 / 0.78-0.79, 64x8192 0.86 / 1.03, 128x3072 0.83 / 0.99 (float32 36 KB,
 * bfloat16 30 KB); float64 128x4096 0.94, 64x2048 0.88; 2 threads 128x4096 0.87 / 1.00,
 * 1024x4096 0.84 / 1.05, 8192x4096 0.98 / 0.84.  Under the bound it lost: float32 rows of
 * 2048 values (24 KB) 1.07-1.09, of 1536 1.21.  Groups of 4 gained less; blocks of 2048
 * columns less in float32.  With one parameter the row's second read costs as much as the
 * parameter's (RMSNorm with a weight: 1.03-1.08x), so such calls keep the row order. */
#define FN_GROUP_MIN_BYTES 32768
#define FN_GROUP_ROWS 8
#define FN_PARAM_BLOCK 1024
/* Super-rows are a multiple of this many elements: a full vector in every family. */
#define FN_LANE_MULTIPLE 16
/* Outputs of at least this many bytes are written with streaming stores: those of
 * LayerNorm/RMSNorm over rows without a residual, and BatchNorm's (fn_affine) on one
 * thread.  On the AVX-512 Xeon a 24 MB output streamed at 0.7x the time of plain stores
 * and a 12 MB one (which its last-level cache kept between calls) at 1.45x, hence 16 MB at
 * first.  On the Zen 4 VM, whose 32 MB L3 other tenants share, in-process A/Bs of 8
 * against 16 MB, time per call streamed over plain: float32 LayerNorm 4096x768 (12 MB)
 * 0.65-0.84, RMSNorm 0.74-0.79, 3072x768 (9 MB) 0.57-0.65, 2048x1024 (8 MB) 0.64-0.95,
 * bfloat16 8192x768 (12 MB) 0.82-1.00, on 2 threads 4096x768 0.61-0.76; BatchNorm
 * 16x64x56x56 (12.8 MB) 0.74-0.88 on 1 thread.  Smaller outputs lost: float32 2048x768
 * (6 MB) 1.01-1.07, bfloat16 4096x768 (6 MB) 1.24, 2048x768 (3 MB) 1.38-1.53. */
#define FN_STREAM_MIN_BYTES (8u << 20)
/* The others keep 16 MB: BatchNorm on two or more threads (the 12.8 MB BatchNorm above took
 * 1.11-1.57x the time streamed on 2 threads, eval and training, either layout), the fused
 * residual (float32 4096x768 0.75-0.90x the time streamed, 2048x1024 0.69x, but 3072x768
 * 1.55-1.60x), and, not measured again, LayerNorm over columns and GroupNorm. */
#define FN_STREAM_MIN_BYTES_OTHERS (16u << 20)

/* A row norm of at least this many rows reads its weight and bias from a copy placed like
 * y when they are not: every vector of every row loads them, the normalize pass works on
 * y's vector boundaries, and a load that straddles two cache lines costs a second access.
 * NumPy places arrays 16 bytes past a line, where the parameters usually sit like y
 * already.  The copy costs two rows' parameters per call. */
#define FN_ALIGN_PARAMS_MIN_ROWS 16
/* A bfloat16 call of at least this many rows makes its parameters' NaNs canonical while
 * copying them (about 0.6 cycles per parameter), so that the stores skip their NaN test
 * (3 operations per 8 values of every row); fewer rows keep the test (fn_row_params). */
#define FN_CANONICAL_PARAMS_MIN_ROWS 8
/* Stream y only when it is large and not read back: in place, x's lines are owned already.
 * FN_STORE_STREAM or 0: the row kernels' store flag, and the column kernels' boolean. */
static int fn_stream(const void *x, const void *y, size_t bytes, size_t min_bytes) {
    return bytes >= min_bytes && x != y ? FN_STORE_STREAM : 0;
}

/* `bytes` of malloc'ed memory starting on a 64-byte boundary (a cache line, the widest
 * vector); *block receives the pointer to free. */
static void *fn_malloc_aligned(size_t bytes, void **block) {
    *block = malloc(bytes + 63);
    return *block ? (void *)(((uintptr_t)*block + 63) & ~(uintptr_t)63) : NULL;
}

/* A float32 value's bits, a NaN made quiet with its low 16 bits cleared: the same NaN
 * once rounded to bfloat16 (FN_STORE_NAN_CANONICAL). */
static uint32_t fn_canonical_nan(uint32_t bits) {
    return (bits & 0x7fffffffu) > 0x7f800000u ? (bits | 0x400000u) & 0xffff0000u : bits;
}

/* `n` compute-dtype parameters (`size` bytes each) copied to dst in a row kernel's order
 * (kernels.h, param_block): natural for order 0, else (float32, order 16) each full block
 * of 16 values as its 8 even-indexed values, then its 8 odd ones.  bfloat16's parameters
 * (`canonical`) have their NaNs made canonical on the way, so that the kernel's bfloat16
 * stores may skip their NaN test.  Loops of constant shape, which the compiler vectorizes:
 * a one-row call pays for this copy.  Returns dst. */
static const void *fn_copy_params(void *dst, const void *src, size_t n, size_t size,
                                  size_t order, int canonical) {
    size_t blocked = order == 16 ? n / 16 * 16 : 0;
    const uint32_t *from = (const uint32_t *)src;
    uint32_t *to = (uint32_t *)dst;
    if (canonical) {
        for (size_t block = 0; block < blocked; block += 16)
            for (size_t k = 0; k < 8; ++k) {
                to[block + k] = fn_canonical_nan(from[block + 2 * k]);
                to[block + 8 + k] = fn_canonical_nan(from[block + 2 * k + 1]);
            }
        for (size_t i = blocked; i < n; ++i) to[i] = fn_canonical_nan(from[i]);
        return dst;
    }
    for (size_t block = 0; block < blocked; block += 16)
        for (size_t k = 0; k < 8; ++k) {
            to[block + k] = from[block + 2 * k];
            to[block + 8 + k] = from[block + 2 * k + 1];
        }
    memcpy((char *)dst + blocked * size, (const char *)src + blocked * size, (n - blocked) * size);
    return dst;
}

static size_t fn_storage_size(fastnorm_dtype_t dtype) { return dtype == FASTNORM_F32 ? 4 : dtype == FASTNORM_F64 ? 8 : 2; }
static size_t fn_compute_size(fastnorm_dtype_t dtype) { return dtype == FASTNORM_F64 ? 8 : 4; }

/* Streaming (non-temporal) stores are weakly ordered, and the kernels leave the fence to
 * their caller: each thread fences once it has run its share of a loop (FN_PARALLEL_FOR),
 * so the output is complete when the call returns.  Once per thread, not once per row: on
 * Zen 4 an SFENCE after every 3 KB row (the fence waits for the write-combining buffers
 * to drain, and the next row's loads wait behind it) kept LayerNorm 32768x768 at
 * 1.12-1.16x the copy's time, against 0.74x without.  Off x86 the scalar family's
 * "streaming" stores are plain ones. */
#if defined(__x86_64__) || defined(_M_X64) || defined(_M_AMD64)
#include <xmmintrin.h>
#define FN_STREAM_FENCE() _mm_sfence()
#else
#define FN_STREAM_FENCE() ((void)0)
#endif

/* for (long long var = 0; var < count; ++var) { body }, over the `threads` (a variable in
 * scope) OpenMP threads with a static schedule, then FN_STREAM_FENCE in each thread.  One
 * thread runs the plain loop: entering even a one-thread parallel region costs a fraction
 * of a microsecond, a noticeable share of a small call. */
#ifdef _OPENMP
#define FN_PARALLEL_FOR(var, count, ...)                                                  \
    do {                                                                                  \
        long long fn_count_ = (long long)(count);                                         \
        if (threads > 1) {                                                                \
            _Pragma("omp parallel num_threads(threads)")                                  \
            {                                                                             \
                _Pragma("omp for schedule(static) nowait")                                \
                for (long long var = 0; var < fn_count_; ++var) { __VA_ARGS__ }           \
                FN_STREAM_FENCE();                                                        \
            }                                                                             \
        } else {                                                                          \
            for (long long var = 0; var < fn_count_; ++var) { __VA_ARGS__ }               \
            FN_STREAM_FENCE();                                                            \
        }                                                                                 \
    } while (0)
#else
#define FN_PARALLEL_FOR(var, count, ...)                                                  \
    do {                                                                                  \
        long long fn_count_ = (long long)(count);                                         \
        (void)threads;                                                                    \
        for (long long var = 0; var < fn_count_; ++var) { __VA_ARGS__ }                   \
        FN_STREAM_FENCE();                                                                \
    } while (0)
#endif

static int fn_threads(int n_threads, size_t elements) {
    if (elements < FN_PARALLEL_MIN_ELEMENTS) return 1;
    int threads = n_threads > 0 ? n_threads : fastnorm_default_threads();
    return threads < 1 ? 1 : threads;
}

/* a * b * c, or 0 with *overflow set */
static size_t fn_product(size_t a, size_t b, size_t c, int *overflow) {
    if (a && b > SIZE_MAX / a) { *overflow = 1; return 0; }
    size_t ab = a * b;
    if (ab && c > SIZE_MAX / ab) { *overflow = 1; return 0; }
    return ab * c;
}

/* One element of storage dtype, in the compute dtype, widened to double. */
static double fn_element(fastnorm_dtype_t dtype, const void *base, size_t index) {
    switch (dtype) {
    case FASTNORM_F32: return fn_load1_f32((const float *)base + index);
    case FASTNORM_F64: return fn_load1_f64((const double *)base + index);
    case FASTNORM_F16: return fn_load1_f16((const uint16_t *)base + index);
    default: return fn_load1_bf16((const uint16_t *)base + index);
    }
}

/* h = x + residual rounded to the storage dtype, as the kernels compute it. */
static double fn_sum_element(fastnorm_dtype_t dtype, const void *x, const void *residual, size_t index) {
    double a = fn_element(dtype, x, index);
    if (!residual) return a;
    double b = fn_element(dtype, residual, index);
    switch (dtype) {
    case FASTNORM_F32: return fn_round1_f32((float)a + (float)b);
    case FASTNORM_F64: return a + b;
    case FASTNORM_F16: return fn_round1_f16((float)a + (float)b);
    default: return fn_round1_bf16((float)a + (float)b);
    }
}

static void fn_put(fastnorm_dtype_t dtype, void *base, size_t index, double value) {
    if (!base) return;
    if (dtype == FASTNORM_F64)
        ((double *)base)[index] = value;
    else
        ((float *)base)[index] = (float)value;
}

/* weight or bias entry i in the compute dtype, or `absent` when there is none */
static double fn_param(fastnorm_dtype_t dtype, const void *p, size_t i, double absent) {
    if (!p) return absent;
    return dtype == FASTNORM_F64 ? ((const double *)p)[i] : (double)((const float *)p)[i];
}

/* Chan et al.: merge partial (count_b, mean_b, m2_b) into (count, mean, m2). */
static void fn_merge(double *count, double *mean, double *m2, double count_b, double mean_b, double m2_b) {
    if (count_b == 0) return;
    if (*count == 0) { *count = count_b; *mean = mean_b; *m2 = m2_b; return; }
    double total = *count + count_b, delta = mean_b - *mean;
    *mean += delta * (count_b / total);
    *m2 += m2_b + delta * delta * (*count * count_b / total);
    *count = total;
}

/* mean and rstd of one group from its shifted partials; any NaN/inf in the group (seen as
 * non-finite partials) makes both NaN, so the whole group's output is NaN. */
static void fn_finish(fastnorm_norm_kind_t kind, double shift, double mean_shifted, double m2,
                      double count, double eps, double *mean, double *rstd) {
    if (!isfinite(mean_shifted) || !isfinite(m2)) {
        *mean = NAN;
        *rstd = NAN;
        return;
    }
    double spread = m2 / count; /* variance, or mean of squares for RMS */
    if (spread < 0) spread = 0;
    *mean = kind == FASTNORM_LAYER_NORM ? shift + mean_shifted : 0.0;
    *rstd = 1.0 / sqrt(spread + eps);
}

/* ---- fastnorm_norm ------------------------------------------------------------------ */

typedef struct {
    const fastnorm_kernels_t *kernels;
    fastnorm_norm_kind_t kind;
    fastnorm_dtype_t dtype;
    size_t outer, middle, inner, item_size;
    const char *x, *residual;
    char *residual_out, *y;
    const void *weight, *bias;
    double eps;
    void *mean_out, *rstd_out;
    int stream, row_store; /* column kernels: stream; row kernels: FN_STORE_* flags */
    int h_in_stats;        /* fn_norm_spans */
} fn_norm_job;

/* Where a parameter copy for the row kernels starts, relative to a 64-byte boundary: where
 * y's vector boundaries fall, in compute-dtype elements (the normalize pass starts its
 * loop there), when every row of y starts at the same place in a cache line; else on the
 * boundary. */
static size_t fn_param_phase(const void *y, size_t item_size, size_t n, size_t size) {
    uintptr_t address = (uintptr_t)y;
    if ((n * item_size) % 64 || address % item_size) return 0;
    size_t lead = (64 - address % 64) % 64 / item_size; /* y's elements before a boundary */
    return (64 - lead * size % 64) % 64;
}

/* The row kernels' weight and bias for a call of `rows` rows of n values written to y, and
 * the store flags they imply.  They are copied into the table's param_block order where
 * that is not natural, and placed like y (fn_param_phase) from FN_ALIGN_PARAMS_MIN_ROWS
 * rows if they are not.  From FN_CANONICAL_PARAMS_MIN_ROWS rows a bfloat16 copy has its
 * NaNs made canonical and the flags include FN_STORE_NAN_CANONICAL, as they do without
 * parameters; otherwise the kernels keep the bfloat16 store's NaN test.  Returns the
 * flags, or -1 without memory for a copy the kernels need; *block receives the copy to
 * free (or NULL). */
static int fn_row_params(const fastnorm_kernels_t *kernels, fastnorm_dtype_t dtype, size_t rows,
                         size_t n, const void *y, const void **weight, const void **bias,
                         void **block) {
    int bf16 = dtype == FASTNORM_BF16;
    size_t order = kernels->param_block[dtype], size = fn_compute_size(dtype);
    *block = NULL;
    if (!*weight && !*bias) return bf16 ? FN_STORE_NAN_CANONICAL : 0;
    /* pairs in a family order start at the row's start, so their blocks on a boundary */
    size_t phase = order ? 0 : fn_param_phase(y, fn_storage_size(dtype), n, size);
    size_t stride = (n * size + 63) / 64 * 64; /* bias: as far past weight as a line multiple */
    int misplaced = (*weight && ((uintptr_t)*weight - phase) % 64) ||
                    (*bias && ((uintptr_t)*bias - phase) % 64);
    if (!order && !(rows >= FN_ALIGN_PARAMS_MIN_ROWS && misplaced)) return 0;
    char *copy = fn_malloc_aligned(stride + n * size + phase, block);
    if (!copy) return order ? -1 : 0; /* a copy in place only helps: the caller's serve */
    int canonical = bf16 && rows >= FN_CANONICAL_PARAMS_MIN_ROWS;
    if (*weight) *weight = fn_copy_params(copy + phase, *weight, n, size, order, canonical);
    if (*bias) *bias = fn_copy_params(copy + phase + stride, *bias, n, size, order, canonical);
    return canonical ? FN_STORE_NAN_CANONICAL : 0;
}

/* The spans from byte `offset` on that the two passes read, and where they store h =
 * x + residual (residual_out).  Where y is streamed, the dtype is float32 or float64 and
 * h has lines of its own, the normalize pass reads x and residual again and streams h
 * with y: the statistics pass's plain stores would read each of h's lines from memory
 * first (RMSNorm float32, the call's time over that of the same call without
 * residual_out, against h stored by the statistics pass: 32768x768 0.73-0.89x, 8192x4096
 * 0.88-0.92x; `bench --residual --out`, four runs, time per call at 32768x768: RMSNorm
 * 0.71-0.76x, LayerNorm 0.75-1.03x, three of four under 0.84x).  Otherwise
 * (job->h_in_stats) the statistics pass stores h and the normalize pass reads h alone.
 * In cache, h from the normalize pass took 1.15-1.25x the time (512x768, 128x4096); over
 * x or residual, whose lines are owned already, 1.5x out of cache with plain stores
 * beside y's streaming ones, 1.25-1.3x streamed; and in bfloat16 and float16, whose rows
 * are compute-bound, 1.10-1.16x (converting x and residual again costs more than the
 * read for ownership of half as many bytes). */
typedef struct {
    const char *x, *residual; /* the statistics pass's inputs */
    char *stats_h;            /* where it stores h, or NULL */
    const char *in, *in_residual; /* the normalize pass's inputs */
    char *normalize_h;            /* where it stores h, or NULL */
} fn_norm_spans;

static fn_norm_spans fn_spans(const fn_norm_job *job, size_t offset) {
    fn_norm_spans s = {job->x + offset, job->residual ? job->residual + offset : NULL, NULL,
                       job->x + offset, job->residual ? job->residual + offset : NULL, NULL};
    char *h = job->residual_out ? job->residual_out + offset : NULL;
    if (h && job->h_in_stats) {
        s.stats_h = h;
        s.in = h;
        s.in_residual = NULL;
    } else {
        s.normalize_h = h;
    }
    return s;
}

/* A row's statistics relative to its shift (its first value; 0 for RMSNorm). */
typedef struct {
    double shift, mean_shifted, m2;
} fn_row_moments;

/* Row r's shift: its first value of h = x (+ residual), or 0 for RMSNorm. */
static double fn_row_shift(const fn_norm_job *job, size_t r) {
    size_t offset = r * job->middle * job->item_size;
    if (job->kind != FASTNORM_LAYER_NORM) return 0.0;
    return fn_sum_element(job->dtype, job->x + offset,
                          job->residual ? job->residual + offset : NULL, 0);
}

static void fn_row_stats(const fn_norm_job *job, size_t r, fn_row_moments *m) {
    size_t n = job->middle;
    fn_norm_spans s = fn_spans(job, r * n * job->item_size);
    m->shift = fn_row_shift(job, r);
    job->kernels->row_stats[job->dtype](s.x, s.residual, s.stats_h, n, m->shift,
                                        job->kind == FASTNORM_LAYER_NORM, &m->mean_shifted,
                                        &m->m2);
}

/* Row r's mean and rstd (stored where the caller asked for them); returns rstd. */
static double fn_row_finish(const fn_norm_job *job, size_t r, const fn_row_moments *m) {
    double mean, rstd;
    fn_finish(job->kind, m->shift, m->mean_shifted, m->m2, (double)job->middle, job->eps, &mean,
              &rstd);
    fn_put(job->dtype, job->mean_out, r, mean);
    fn_put(job->dtype, job->rstd_out, r, rstd);
    return rstd;
}

/* The normalize pass of row r's elements begin ... begin + count - 1 (fn_norm_spans), the
 * row's mean given as the pair (shift, mean_shifted): exact for float64.  next: NULL, or a
 * span for the kernel to prefetch (the caller reads it next). */
static void fn_row_normalize_span(const fn_norm_job *job, size_t r, double shift,
                                  double mean_shifted, double rstd, size_t begin, size_t count,
                                  const char *next) {
    size_t offset = (r * job->middle + begin) * job->item_size;
    size_t param = begin * fn_compute_size(job->dtype);
    int center = job->kind == FASTNORM_LAYER_NORM;
    fn_norm_spans s = fn_spans(job, offset);
    job->kernels->row_normalize[job->dtype](
        s.in, s.in_residual, s.normalize_h, count, shift, center ? mean_shifted : 0.0, rstd, 0.0,
        job->weight ? (const char *)job->weight + param : NULL,
        job->bias ? (const char *)job->bias + param : NULL, job->y + offset, next, job->row_store);
}

/* Row r's normalize pass, prefetching the next row (which the statistics pass reads next)
 * where the family asks for it (FN_PREFETCH_MAX_BYTES). */
static void fn_row_normalize(const fn_norm_job *job, size_t r, const fn_row_moments *m,
                             double rstd) {
    size_t row_bytes = job->middle * job->item_size;
    int prefetch = job->kernels->prefetch_next && r + 1 < job->outer &&
                   row_bytes <= FN_PREFETCH_MAX_BYTES &&
                   job->outer * row_bytes >= FN_PREFETCH_MIN_BYTES;
    fn_row_normalize_span(job, r, m->shift, m->mean_shifted, rstd, 0, job->middle,
                          prefetch ? job->x + (r + 1) * row_bytes : NULL);
}

/* Rows first ... end - 1 (at most FN_GROUP_ROWS): the statistics of each, then the
 * normalize pass a block of FN_PARAM_BLOCK columns at a time across the rows, so that
 * each block of weight and bias is read into L1 once for the group (nothing to prefetch:
 * the group's statistics have read its rows).  The blocks start on multiples of 16
 * elements, as a parameter order of kernels.h's param_block needs. */
static void fn_norm_row_group(const fn_norm_job *job, size_t first, size_t end) {
    _Static_assert(FN_PARAM_BLOCK % 16 == 0, "a parameter block starts on a multiple of 16");
    fn_row_moments m[FN_GROUP_ROWS];
    double rstd[FN_GROUP_ROWS];
    size_t n = job->middle;
    for (size_t r = first; r < end; ++r) {
        fn_row_stats(job, r, &m[r - first]);
        rstd[r - first] = fn_row_finish(job, r, &m[r - first]);
    }
    for (size_t begin = 0; begin < n; begin += FN_PARAM_BLOCK) {
        size_t count = n - begin < FN_PARAM_BLOCK ? n - begin : FN_PARAM_BLOCK;
        for (size_t r = first; r < end; ++r)
            fn_row_normalize_span(job, r, m[r - first].shift, m[r - first].mean_shifted,
                                  rstd[r - first], begin, count, NULL);
    }
}

/* Statistics then normalization of row r, read from cache the second time. */
static void fn_norm_row(const fn_norm_job *job, size_t r) {
    fn_row_moments m;
    fn_row_stats(job, r, &m);
    fn_row_normalize(job, r, &m, fn_row_finish(job, r, &m));
}

/* Rows begin ... end - 1 with the statistics one row ahead (FN_AHEAD_MAX_BYTES), without
 * a residual in one kernel loop with the previous row's normalize pass
 * (row_stats_normalize: bench --out, alternating builds, three runs, time per call:
 * RMSNorm 64x768 0.88-0.94x, 512x768 0.91-0.92x, 1024x768 0.89-0.90x; LayerNorm 512x768
 * 0.94x, 1024x768 0.94-0.96x).  Each row's outputs are written after the next row's
 * statistics read its inputs, or while they do, which is right in place too: row r's
 * output overlaps no other row's inputs (the Python layer makes sure of that for every
 * output). */
static void fn_norm_rows_ahead(const fn_norm_job *job, size_t begin, size_t end) {
    size_t n = job->middle, bytes = n * job->item_size;
    int center = job->kind == FASTNORM_LAYER_NORM;
    fn_row_moments m, next;
    if (begin < end) fn_row_stats(job, begin, &next);
    for (size_t r = begin; r < end; ++r) {
        m = next;
        double rstd = fn_row_finish(job, r, &m);
        if (r + 1 < end && !job->residual) { /* both in one loop (kernels.h) */
            const char *x = job->x + r * bytes;
            next.shift = fn_row_shift(job, r + 1);
            job->kernels->row_stats_normalize[job->dtype](
                x + bytes, n, next.shift, center, &next.mean_shifted, &next.m2, x, m.shift,
                center ? m.mean_shifted : 0.0, rstd, job->weight, job->bias, job->y + r * bytes,
                job->row_store);
            continue;
        }
        if (r + 1 < end) fn_row_stats(job, r + 1, &next);
        fn_row_normalize(job, r, &m, rstd);
    }
}

/* One batch of long rows (fn_norm_long_rows): rows first ... first + count - 1, each in
 * `segments` segments of FN_ROW_SEGMENT elements (the last one shorter). */
typedef struct {
    size_t first, count;
    double *part_mean, *part_m2;         /* per segment: count * segments */
    double *shift, *mean_shifted, *rstd; /* per row: count */
} fn_long_batch;

static size_t fn_segment_length(size_t n, size_t s) {
    size_t begin = s * FN_ROW_SEGMENT;
    return n - begin < FN_ROW_SEGMENT ? n - begin : FN_ROW_SEGMENT;
}

/* The batch's shifts: before any of its writes, as residual_out may be x. */
static void fn_long_shifts(const fn_norm_job *job, fn_long_batch *batch) {
    for (size_t b = 0; b < batch->count; ++b) batch->shift[b] = fn_row_shift(job, batch->first + b);
}

/* The statistics of segment `item` (row item / segments) of the batch. */
static void fn_long_stats(const fn_norm_job *job, const fn_long_batch *batch, size_t segments,
                          size_t item) {
    size_t b = item / segments, s = item % segments, n = job->middle;
    fn_norm_spans spans = fn_spans(job, ((batch->first + b) * n + s * FN_ROW_SEGMENT) * job->item_size);
    job->kernels->row_stats[job->dtype](spans.x, spans.residual, spans.stats_h,
                                        fn_segment_length(n, s), batch->shift[b],
                                        job->kind == FASTNORM_LAYER_NORM, &batch->part_mean[item],
                                        &batch->part_m2[item]);
}

/* Each row's segment partials merged in order, its mean and rstd. */
static void fn_long_finish(const fn_norm_job *job, fn_long_batch *batch, size_t segments) {
    for (size_t b = 0; b < batch->count; ++b) {
        double total = 0, m2 = 0, mean;
        batch->mean_shifted[b] = 0;
        for (size_t s = 0; s < segments; ++s) {
            size_t item = b * segments + s;
            if (job->kind == FASTNORM_LAYER_NORM)
                fn_merge(&total, &batch->mean_shifted[b], &m2, (double)fn_segment_length(job->middle, s),
                         batch->part_mean[item], batch->part_m2[item]);
            else
                m2 += batch->part_m2[item];
        }
        fn_finish(job->kind, batch->shift[b], batch->mean_shifted[b], m2, (double)job->middle,
                  job->eps, &mean, &batch->rstd[b]);
        fn_put(job->dtype, job->mean_out, batch->first + b, mean);
        fn_put(job->dtype, job->rstd_out, batch->first + b, batch->rstd[b]);
    }
}

/* The normalize pass of segment `item` of the batch; `ahead`: it prefetches the same segment
 * of x in the next batch, which the next statistics pass reads. */
static void fn_long_normalize(const fn_norm_job *job, const fn_long_batch *batch, size_t segments,
                              size_t item, int ahead) {
    size_t b = item / segments, s = item % segments, n = job->middle, r = batch->first + b;
    size_t begin = s * FN_ROW_SEGMENT;
    const char *next = NULL;
    if (ahead && r + batch->count < job->outer)
        next = job->x + ((r + batch->count) * n + begin) * job->item_size;
    fn_row_normalize_span(job, r, batch->shift[b], batch->mean_shifted[b], batch->rstd[b], begin,
                          fn_segment_length(n, s), next);
}

/* Rows longer than FN_ROW_SEGMENT: segment partials in parallel, merged per row in order,
 * then the segments normalized in parallel.  Rows go through both passes a batch of about
 * FN_LONG_ROW_BATCH_BYTES at a time, so that the second pass reads them from cache, not
 * from memory (ctypes A/B against all statistics first, float32, median of 9: LayerNorm
 * 2048x20000 0.77x the time (2 threads 0.94x), 256x65536 0.92x (0.91x), 16x1048576
 * 0.92-0.97x (0.80x), RMSNorm 16x1048576 0.90x; 256 KB batches lost on 2 threads
 * (2048x20000 1.21x), 4 MB ones gained less on 1).  On more than one thread the next
 * batch's statistics run in the same loop as this batch's normalize pass, segment beside
 * segment, so that the memory sees reads and streamed writes together rather than each
 * in turn (bench --out, 2 threads, builds alternating, five runs, time per call: RMSNorm
 * 16x1048576 0.70-0.97x, 2048x20000 0.78-1.02x; LayerNorm 16x1048576 0.78-0.99x,
 * 2048x20000 0.78-0.96x).  One thread keeps them apart: there the core's own work bounds
 * the call, and the shared loop lost (LayerNorm 16x1048576 1.07-1.13x, 2048x20000
 * 1.03-1.14x).  Its normalize pass prefetches the next batch instead, so that memory
 * reads it while the pass writes (Zen 4, AVX-512, in-process A/Bs, float32 and bfloat16,
 * time per call: RMSNorm 16x1048576 0.83-0.97x, 256x65536 0.89-0.99x, 2048x20000
 * 0.91-0.97x; LayerNorm, whose pass also reads a weight and a bias as long as the row,
 * 0.96-1.05x).  Outputs are x, residual or disjoint from every input (the Python layer
 * makes sure), so a batch's writes never reach another batch's rows. */
static fastnorm_status_t fn_norm_long_rows(const fn_norm_job *job, int threads) {
    size_t rows = job->outer, n = job->middle, size = job->item_size;
    size_t segments = (n + FN_ROW_SEGMENT - 1) / FN_ROW_SEGMENT;
    size_t batch = FN_LONG_ROW_BATCH_BYTES / (n * size) ? FN_LONG_ROW_BATCH_BYTES / (n * size) : 1;
    if (batch > rows) batch = rows;
    size_t per_batch = 2 * batch * segments + 3 * batch;
    double *scratch = malloc(sizeof(double) * 2 * per_batch);
    if (!scratch) return FASTNORM_ERR_NO_MEMORY;
    fn_long_batch batches[2];
    for (int k = 0; k < 2; ++k) {
        double *at = scratch + k * per_batch;
        batches[k] = (fn_long_batch){0, 0, at, at + batch * segments, at + 2 * batch * segments,
                                     at + 2 * batch * segments + batch,
                                     at + 2 * batch * segments + 2 * batch};
    }
    fn_long_batch *now = &batches[0], *next = &batches[1];
    now->count = batch;
    fn_long_shifts(job, now);
    FN_PARALLEL_FOR(item, batch * segments, fn_long_stats(job, now, segments, (size_t)item););
    while (now->count) {
        fn_long_finish(job, now, segments);
        next->first = now->first + now->count;
        next->count = rows - next->first < batch ? rows - next->first : batch;
        fn_long_shifts(job, next);
        size_t now_items = now->count * segments, next_items = next->count * segments;
        if (threads > 1) {
            FN_PARALLEL_FOR(item, now_items, {
                if ((size_t)item < next_items) fn_long_stats(job, next, segments, (size_t)item);
                fn_long_normalize(job, now, segments, (size_t)item, 0);
            });
        } else {
            FN_PARALLEL_FOR(item, now_items,
                            fn_long_normalize(job, now, segments, (size_t)item, 1););
            FN_PARALLEL_FOR(item, next_items, fn_long_stats(job, next, segments, (size_t)item););
        }
        fn_long_batch *done = now;
        now = next;
        next = done;
    }
    free(scratch);
    return FASTNORM_OK;
}

/* Statistics over a non-trailing axis: for each (outer, column chunk) item, column
 * statistics over `middle` rows, then the normalize pass over the same block. */
static void fn_norm_columns(const fn_norm_job *job, int threads) {
    size_t chunks = (job->inner + FN_COLUMN_CHUNK - 1) / FN_COLUMN_CHUNK;
    size_t items = job->outer * chunks, size = job->item_size, csize = fn_compute_size(job->dtype);
    int center = job->kind == FASTNORM_LAYER_NORM;
    FN_PARALLEL_FOR(item, items, {
        size_t o = (size_t)item / chunks, column = ((size_t)item % chunks) * FN_COLUMN_CHUNK;
        size_t width = job->inner - column < FN_COLUMN_CHUNK ? job->inner - column : FN_COLUMN_CHUNK;
        size_t offset = (o * job->middle * job->inner + column) * size;
        const char *x = job->x + offset;
        double mean_shifted[FN_COLUMN_CHUNK], m2[FN_COLUMN_CHUNK];
        /* in the compute dtype; on a cache line, as every vector loads them */
        _Alignas(64) double mean_hi[FN_COLUMN_CHUNK];
        _Alignas(64) double mean_lo[FN_COLUMN_CHUNK];
        _Alignas(64) double scale[FN_COLUMN_CHUNK];
        job->kernels->col_stats[job->dtype](x, job->middle, width, job->inner, center ? x : NULL,
                                            center, mean_shifted, m2);
        for (size_t j = 0; j < width; ++j) {
            double shift = center ? fn_element(job->dtype, x, j) : 0.0, mean, rstd;
            fn_finish(job->kind, shift, mean_shifted[j], m2[j], (double)job->middle, job->eps, &mean, &rstd);
            fn_put(job->dtype, job->mean_out, o * job->inner + column + j, mean);
            fn_put(job->dtype, job->rstd_out, o * job->inner + column + j, rstd);
            if (csize == 8) { /* the pair (shift, mean_shifted) is exact where mean rounds */
                mean_hi[j] = shift;
                mean_lo[j] = mean_shifted[j];
                scale[j] = rstd;
            } else {
                float hi = (float)mean;
                ((float *)mean_hi)[j] = hi;
                ((float *)mean_lo)[j] = (float)(mean - (double)hi);
                ((float *)scale)[j] = (float)rstd;
            }
        }
        job->kernels->col_normalize[job->dtype](x, job->middle, width, job->inner,
                                                center ? mean_hi : NULL, center ? mean_lo : NULL,
                                                scale, job->weight, job->bias,
                                                NULL, job->y + offset, job->stream);
    });
}

/* A checked call's rows (or columns), on `threads` threads. */
static fastnorm_status_t fn_norm_run(const fn_norm_job *job, int threads) {
    if (job->inner != 1) {
        fn_norm_columns(job, threads);
        return FASTNORM_OK;
    }
    if (job->middle > FN_ROW_SEGMENT) return fn_norm_long_rows(job, threads);
    size_t row_bytes = job->middle * job->item_size;
    if (row_bytes <= FN_AHEAD_MAX_BYTES && job->outer * row_bytes < FN_PREFETCH_MIN_BYTES) {
        /* one contiguous share of the rows per thread, as the static schedule gives */
        FN_PARALLEL_FOR(t, threads, {
            fn_norm_rows_ahead(job, (size_t)t * job->outer / (size_t)threads,
                               (size_t)(t + 1) * job->outer / (size_t)threads);
        });
        return FASTNORM_OK;
    }
    /* groups no larger than every thread's share of the rows */
    size_t group = (job->outer + (size_t)threads - 1) / (size_t)threads;
    if (group > FN_GROUP_ROWS) group = FN_GROUP_ROWS;
    size_t row_and_params = job->middle * (job->item_size + 2 * fn_compute_size(job->dtype));
    if (job->weight && job->bias && row_and_params > FN_GROUP_MIN_BYTES && group > 1) {
        FN_PARALLEL_FOR(g, (job->outer + group - 1) / group, {
            size_t first = (size_t)g * group;
            fn_norm_row_group(job, first, first + group < job->outer ? first + group : job->outer);
        });
        return FASTNORM_OK;
    }
    FN_PARALLEL_FOR(r, job->outer, fn_norm_row(job, (size_t)r););
    return FASTNORM_OK;
}

fastnorm_status_t fastnorm_norm(fastnorm_norm_kind_t kind, fastnorm_dtype_t dtype, size_t outer,
                                size_t middle, size_t inner, const void *x, const void *residual,
                                void *residual_out, void *y, const void *weight, const void *bias,
                                double eps, void *mean_out, void *rstd_out, int n_threads) {
    int overflow = 0;
    if ((unsigned)dtype >= FASTNORM_DTYPE_COUNT) return FASTNORM_ERR_BAD_DTYPE;
    if (kind != FASTNORM_LAYER_NORM && kind != FASTNORM_RMS_NORM) return FASTNORM_ERR_BAD_VALUE;
    if (!x || !y) return FASTNORM_ERR_NULL_POINTER;
    size_t total = fn_product(outer, middle, inner, &overflow);
    if (overflow || total == 0) return FASTNORM_ERR_BAD_SHAPE;
    if (!(eps >= 0) || !isfinite(eps)) return FASTNORM_ERR_BAD_VALUE;
    if (residual_out && !residual) return FASTNORM_ERR_NULL_POINTER;
    if (residual && inner != 1) return FASTNORM_ERR_BAD_SHAPE;
    if (residual_out && residual_out == y) return FASTNORM_ERR_BAD_VALUE;
    int stream = fn_stream(x, y, total * fn_storage_size(dtype),
                           inner == 1 && !residual ? FN_STREAM_MIN_BYTES
                                                   : FN_STREAM_MIN_BYTES_OTHERS);
    if (kind == FASTNORM_RMS_NORM) bias = NULL; /* RMSNorm has no bias */
    const fastnorm_kernels_t *kernels = fastnorm_active_kernels();
    void *param_block = NULL;
    int row_store = 0;
    if (inner == 1) { /* the column path takes weight and bias per row, as scalars */
        row_store = fn_row_params(kernels, dtype, outer, middle, y, &weight, &bias, &param_block);
        if (row_store < 0) return FASTNORM_ERR_NO_MEMORY;
    }
    fn_norm_job job = {kernels, kind, dtype, outer, middle, inner,
                       fn_storage_size(dtype), (const char *)x, (const char *)residual,
                       (char *)residual_out, (char *)y, weight, bias, eps, mean_out, rstd_out,
                       stream, stream | row_store,
                       residual_out && (!stream || fn_storage_size(dtype) == 2 ||
                                        residual_out == x || residual_out == residual)};
    fastnorm_status_t status = fn_norm_run(&job, fn_threads(n_threads, total));
    free(param_block);
    return status;
}

/* ---- column path of fastnorm_moments / fastnorm_affine ---------------------------- */

/* (outer, channels * inner) seen as super-rows of k original rows, k * channels * inner a
 * multiple of FN_LANE_MULTIPLE; the last `leftover` original rows stay narrow. */
typedef struct {
    size_t narrow_width, width, super_rows, leftover, chunk_rows, chunks;
} fn_columns;

static size_t fn_gcd(size_t a, size_t b) {
    while (b) { size_t t = a % b; a = b; b = t; }
    return a;
}

static fn_columns fn_columns_of(size_t outer, size_t channels, size_t inner) {
    fn_columns c;
    c.narrow_width = channels * inner;
    size_t k = FN_LANE_MULTIPLE / fn_gcd(c.narrow_width, FN_LANE_MULTIPLE);
    c.width = c.narrow_width * k;
    c.super_rows = outer / k;
    c.leftover = outer % k;
    c.chunk_rows = FN_COLUMN_ITEM_ELEMENTS / c.width;
    size_t quarter = (c.super_rows + 3) / 4;
    size_t min_rows = quarter < FN_COLUMN_MIN_ROWS ? quarter : FN_COLUMN_MIN_ROWS;
    if (c.chunk_rows < min_rows) c.chunk_rows = min_rows;
    if (c.chunk_rows < 16) c.chunk_rows = 16;
    c.chunks = (c.super_rows + c.chunk_rows - 1) / c.chunk_rows;
    return c;
}

/* ---- fastnorm_moments --------------------------------------------------------------- */

/* Rows per gathered span, and the statistics (relative to shift) of span k of channel c:
 * rows k * per_span ... of that channel copied into one contiguous stack buffer first. */
static size_t fn_gather_rows(size_t row_bytes) { return FN_GATHER_BYTES / row_bytes; }

static void fn_gathered_stats(const fastnorm_kernels_t *kernels, fastnorm_dtype_t dtype,
                              size_t outer, size_t channels, size_t inner, const char *x, size_t c,
                              size_t k, double shift, double *mean_shifted, double *m2) {
    size_t row_bytes = inner * fn_storage_size(dtype), per_span = fn_gather_rows(row_bytes);
    size_t first = k * per_span, rows = outer - first < per_span ? outer - first : per_span;
    _Alignas(64) char span[FN_GATHER_BYTES];
    for (size_t o = 0; o < rows; ++o)
        memcpy(span + o * row_bytes, x + ((first + o) * channels + c) * row_bytes, row_bytes);
    kernels->row_stats[dtype](span, NULL, NULL, rows * inner, shift, 1, mean_shifted, m2);
}

/* fn_moments_rows for short rows: each channel's rows are copied, a buffer at a time, into
 * one contiguous span, so one kernel call covers many rows.  A kernel call has a fixed cost
 * (lane merge, scalar tail) that is a large share of a 196-element row's. */
static fastnorm_status_t fn_moments_gathered(const fastnorm_kernels_t *kernels,
                                             fastnorm_dtype_t dtype, size_t outer, size_t channels,
                                             size_t inner, const char *x, double *shift_out,
                                             double *mean_shifted_out, double *m2_out, int threads) {
    size_t row_bytes = inner * fn_storage_size(dtype), rows_per_chunk = fn_gather_rows(row_bytes);
    size_t chunks = (outer + rows_per_chunk - 1) / rows_per_chunk, items = channels * chunks;
    double *part = malloc(sizeof(double) * 2 * items);
    if (!part) return FASTNORM_ERR_NO_MEMORY;
    for (size_t c = 0; c < channels; ++c) shift_out[c] = fn_element(dtype, x, c * inner);
    FN_PARALLEL_FOR(item, items, {
        size_t c = (size_t)item / chunks;
        fn_gathered_stats(kernels, dtype, outer, channels, inner, x, c, (size_t)item % chunks,
                          shift_out[c], &part[2 * item], &part[2 * item + 1]);
    });
    for (size_t c = 0; c < channels; ++c) {
        double count = 0, mean = 0, m2 = 0;
        for (size_t k = 0; k < chunks; ++k) {
            size_t first = k * rows_per_chunk;
            size_t rows = outer - first < rows_per_chunk ? outer - first : rows_per_chunk;
            fn_merge(&count, &mean, &m2, (double)(rows * inner), part[2 * (c * chunks + k)],
                     part[2 * (c * chunks + k) + 1]);
        }
        mean_shifted_out[c] = mean;
        m2_out[c] = isfinite(m2) && isfinite(mean) ? m2 : NAN;
    }
    free(part);
    return FASTNORM_OK;
}

/* Row path of the per-channel statistics: for every channel c, the shift (its first value),
 * the mean relative to that shift and m2, each `channels` doubles.  The shifted mean and
 * shift stay apart so that a float64 caller can subtract them as an exact pair. */
static fastnorm_status_t fn_moments_rows(const fastnorm_kernels_t *kernels, fastnorm_dtype_t dtype,
                                         size_t outer, size_t channels, size_t inner, const char *x,
                                         double *shift_out, double *mean_shifted_out,
                                         double *m2_out, int threads) {
    size_t size = fn_storage_size(dtype), row_bytes = inner * size;
    if (outer > 1 && row_bytes <= FN_GATHER_ROW_BYTES)
        return fn_moments_gathered(kernels, dtype, outer, channels, inner, x, shift_out,
                                   mean_shifted_out, m2_out, threads);
    size_t segments = (inner + FN_ROW_SEGMENT - 1) / FN_ROW_SEGMENT;
    size_t items = outer * channels * segments;
    double *part = malloc(sizeof(double) * 2 * items);
    if (!part) return FASTNORM_ERR_NO_MEMORY;
    for (size_t c = 0; c < channels; ++c) shift_out[c] = fn_element(dtype, x, c * inner);
    FN_PARALLEL_FOR(item, items, {
        size_t row = (size_t)item / segments, begin = ((size_t)item % segments) * FN_ROW_SEGMENT;
        size_t length = inner - begin < FN_ROW_SEGMENT ? inner - begin : FN_ROW_SEGMENT;
        kernels->row_stats[dtype](x + (row * inner + begin) * size, NULL, NULL, length,
                                  shift_out[row % channels], 1, &part[2 * item], &part[2 * item + 1]);
    });
    for (size_t c = 0; c < channels; ++c) {
        double count = 0, mean = 0, m2 = 0;
        for (size_t o = 0; o < outer; ++o)
            for (size_t s = 0; s < segments; ++s) {
                size_t item = (o * channels + c) * segments + s, begin = s * FN_ROW_SEGMENT;
                size_t length = inner - begin < FN_ROW_SEGMENT ? inner - begin : FN_ROW_SEGMENT;
                fn_merge(&count, &mean, &m2, (double)length, part[2 * item], part[2 * item + 1]);
            }
        mean_shifted_out[c] = mean;
        m2_out[c] = isfinite(m2) && isfinite(mean) ? m2 : NAN;
    }
    free(part);
    return FASTNORM_OK;
}

static fastnorm_status_t fn_moments_columns(const fastnorm_kernels_t *kernels, fastnorm_dtype_t dtype,
                                            size_t outer, size_t channels, size_t inner,
                                            const char *x, double *mean_out, double *m2_out,
                                            int threads) {
    fn_columns c = fn_columns_of(outer, channels, inner);
    size_t size = fn_storage_size(dtype);
    /* per chunk and column: shifted mean, m2; then the merged column and the leftover rows */
    size_t parts = c.chunks * c.width;
    double *scratch = malloc(sizeof(double) * (2 * parts + 2 * c.narrow_width + 2 * c.width + 1));
    if (!scratch) return FASTNORM_ERR_NO_MEMORY;
    double *part_mean = scratch, *part_m2 = scratch + parts;
    double *left_mean = scratch + 2 * parts, *left_m2 = left_mean + c.narrow_width;
    double *col_mean = left_m2 + c.narrow_width, *col_m2 = col_mean + c.width;
    FN_PARALLEL_FOR(chunk, c.chunks, {
        size_t first = (size_t)chunk * c.chunk_rows;
        size_t rows = c.super_rows - first < c.chunk_rows ? c.super_rows - first : c.chunk_rows;
        kernels->col_stats[dtype](x + first * c.width * size, rows, c.width, c.width, x, 1,
                                  part_mean + chunk * c.width, part_m2 + chunk * c.width);
    });
    if (c.leftover)
        kernels->col_stats[dtype](x + c.super_rows * c.width * size, c.leftover, c.narrow_width,
                                  c.narrow_width, x, 1, left_mean, left_m2);
    /* each column's chunk partials merged in chunk order (Chan's formula, fn_merge's
     * arithmetic); every column of a chunk has the same count, so the weights are computed
     * once per chunk and the loop over columns vectorizes (one column at a time through
     * fn_merge was a chain of divisions: 9 us of a 40 us (3136, 64) call) */
    double count = 0;
    for (size_t j = 0; j < c.width; ++j) col_mean[j] = col_m2[j] = 0; /* no chunk: no rows */
    for (size_t chunk = 0; chunk < c.chunks; ++chunk) {
        size_t first = chunk * c.chunk_rows;
        double rows = (double)(c.super_rows - first < c.chunk_rows ? c.super_rows - first : c.chunk_rows);
        double total = count + rows, weight = rows / total, cross = count * rows / total;
        const double *mean_b = part_mean + chunk * c.width, *m2_b = part_m2 + chunk * c.width;
        for (size_t j = 0; j < c.width; ++j) {
            double delta = mean_b[j] - col_mean[j];
            col_mean[j] = chunk ? col_mean[j] + delta * weight : mean_b[j];
            col_m2[j] = chunk ? col_m2[j] + (m2_b[j] + delta * delta * cross) : m2_b[j];
        }
        count = total;
    }
    for (size_t channel = 0; channel < channels; ++channel) {
        double ch_count = 0, mean = 0, m2 = 0;
        for (size_t column = 0; column < c.width / inner; column += channels)
        for (size_t j = (column + channel) * inner; j < (column + channel + 1) * inner; ++j) {
            /* column j exists in x's first row only when j is narrow or a super-row exists */
            double shift = c.super_rows || j < c.narrow_width ? fn_element(dtype, x, j) : 0.0;
            double col_count = count, j_mean = col_mean[j], j_m2 = col_m2[j];
            if (j < c.narrow_width && c.leftover)
                fn_merge(&col_count, &j_mean, &j_m2, (double)c.leftover, left_mean[j], left_m2[j]);
            fn_merge(&ch_count, &mean, &m2, col_count, shift + j_mean, j_m2);
        }
        mean_out[channel] = mean;
        m2_out[channel] = isfinite(m2) && isfinite(mean) ? m2 : NAN;
    }
    free(scratch);
    return FASTNORM_OK;
}

fastnorm_status_t fastnorm_moments(fastnorm_dtype_t dtype, size_t outer, size_t channels, size_t inner,
                                   const void *x, double *mean_out, double *m2_out, int n_threads) {
    int overflow = 0;
    if ((unsigned)dtype >= FASTNORM_DTYPE_COUNT) return FASTNORM_ERR_BAD_DTYPE;
    if (!x || !mean_out || !m2_out) return FASTNORM_ERR_NULL_POINTER;
    size_t total = fn_product(outer, channels, inner, &overflow);
    if (overflow || total == 0) return FASTNORM_ERR_BAD_SHAPE;
    int threads = fn_threads(n_threads, total);
    if (inner >= FN_MOMENTS_ROW_MIN) {
        double *shift = malloc(sizeof(double) * channels);
        if (!shift) return FASTNORM_ERR_NO_MEMORY;
        fastnorm_status_t status = fn_moments_rows(fastnorm_active_kernels(), dtype, outer, channels,
                                                   inner, x, shift, mean_out, m2_out, threads);
        for (size_t c = 0; status == FASTNORM_OK && c < channels; ++c) mean_out[c] += shift[c];
        free(shift);
        return status;
    }
    return fn_moments_columns(fastnorm_active_kernels(), dtype, outer, channels, inner, x,
                              mean_out, m2_out, threads);
}

/* ---- fastnorm_affine ---------------------------------------------------------------- */

/* y = (x - mean[c]) * scale[c] + shift[c] over (outer, channels, inner); the float64
 * per-channel arrays are the caller's. */
static fastnorm_status_t fn_affine(fastnorm_dtype_t dtype, size_t outer, size_t channels, size_t inner,
                                   size_t total, const void *x, void *y, const double *mean,
                                   const double *scale, const double *shift, int n_threads) {
    const fastnorm_kernels_t *kernels = fastnorm_active_kernels();
    size_t size = fn_storage_size(dtype), csize = fn_compute_size(dtype);
    int threads = fn_threads(n_threads, total);
    int stream = fn_stream(x, y, total * size,
                           threads > 1 ? FN_STREAM_MIN_BYTES_OTHERS : FN_STREAM_MIN_BYTES);
    const char *xs = (const char *)x;
    char *ys = (char *)y;
    if (inner >= FN_AFFINE_ROW_MIN && inner <= FN_ROW_SEGMENT) { /* a thread's rows per call */
        size_t rows = outer * channels;
        FN_PARALLEL_FOR(t, threads, {
            size_t first = rows * (size_t)t / (size_t)threads;
            size_t last = rows * (size_t)(t + 1) / (size_t)threads, offset = first * inner * size;
            kernels->rows_affine[dtype](xs + offset, last - first, inner, first, channels, mean,
                                        scale, shift, ys + offset, stream);
        });
        return FASTNORM_OK;
    }
    if (inner >= FN_AFFINE_ROW_MIN) {
        size_t segments = (inner + FN_ROW_SEGMENT - 1) / FN_ROW_SEGMENT;
        size_t items = outer * channels * segments;
        FN_PARALLEL_FOR(item, items, {
            size_t row = (size_t)item / segments, begin = ((size_t)item % segments) * FN_ROW_SEGMENT;
            size_t channel = row % channels;
            size_t length = inner - begin < FN_ROW_SEGMENT ? inner - begin : FN_ROW_SEGMENT;
            size_t offset = (row * inner + begin) * size;
            kernels->row_normalize[dtype](xs + offset, NULL, NULL, length, mean ? mean[channel] : 0.0, 0.0,
                                          scale[channel], shift[channel], NULL, NULL, ys + offset,
                                          NULL, stream);
        });
        return FASTNORM_OK;
    }
    fn_columns c = fn_columns_of(outer, channels, inner);
    /* Where y is not on a cache line (NumPy puts arrays 16 bytes past one), every other
     * vector store splits across two lines, and the kernel streams only when every row
     * starts aligned, so a large channels-last output was never streamed.  Without leftover
     * rows the pass starts at y's first line boundary instead: super-row r is read from
     * element r * width + lead, with the parameters stored rotated by `lead` columns to
     * match; the first `lead` elements (the parameters' last `lead` entries) and the last
     * super-row, `lead` elements short, are calls of their own.  Measured (AVX2, Zen 3,
     * 1 thread, alternating in one process, time over np.copyto, three runs): channels-last
     * BatchNorm eval (32, 56, 56, 64) 0.97-1.05 -> 0.81-0.84, (64, 224, 224, 3) 0.93-1.03
     * -> 0.75-0.80; training 1.72-1.76 -> 1.51-1.60 and 1.60-1.82 -> 1.47-1.60. */
    size_t lead = 0;
    if (!c.leftover && c.super_rows > 1 && (uintptr_t)y % size == 0 && c.width * size % 64 == 0)
        lead = (64 - (uintptr_t)y % 64) % 64 / size;
    /* per-column parameters of one super-row, in the compute dtype: y = (x - hi) * scale +
     * shift', the low part of the mean (m - hi) folded into shift' in float64 (no mean_lo
     * vector: one load and one subtraction fewer per vector, one rounding fewer); on a cache
     * line, as every vector loads them (channels-last (3136, 64) float32 took 1.1-1.2x the
     * time with them 16 bytes past one) */
    void *param_block;
    char *params = fn_malloc_aligned(3 * c.width * csize, &param_block);
    if (!params) return FASTNORM_ERR_NO_MEMORY;
    char *mean_hi = params, *col_scale = params + c.width * csize;
    char *col_shift = params + 2 * c.width * csize;
    /* a super-row is k * channels blocks of `inner` columns, block b of channel b % channels:
     * each channel's three values computed once per block, no division per column; column
     * j's at position (j - lead) mod width */
    for (size_t block = 0, channel = 0; block * inner < c.width; ++block) {
        double m = mean ? mean[channel] : 0.0;
        for (size_t j = block * inner; j < (block + 1) * inner; ++j) {
            size_t at = j >= lead ? j - lead : j + c.width - lead;
            if (csize == 8) {
                ((double *)mean_hi)[at] = m;
                ((double *)col_scale)[at] = scale[channel];
                ((double *)col_shift)[at] = shift[channel];
            } else {
                float hi = (float)m;
                ((float *)mean_hi)[at] = hi;
                ((float *)col_scale)[at] = (float)scale[channel];
                ((float *)col_shift)[at] = (float)(shift[channel] - (m - (double)hi) * scale[channel]);
            }
        }
        channel = channel + 1 == channels ? 0 : channel + 1;
    }
    FN_PARALLEL_FOR(chunk, c.chunks + 1, {
        size_t first = (size_t)chunk * c.chunk_rows;
        if ((size_t)chunk == c.chunks) { /* the narrow leftover rows, or the first `lead` */
            if (c.leftover) {
                size_t offset = c.super_rows * c.width * size;
                kernels->col_normalize[dtype](xs + offset, c.leftover, c.narrow_width, c.narrow_width,
                                              mean ? mean_hi : NULL, NULL, col_scale,
                                              NULL, NULL, col_shift, ys + offset, stream);
            } else if (lead) {
                size_t at = (c.width - lead) * csize;
                kernels->col_normalize[dtype](xs, 1, lead, lead, mean ? mean_hi + at : NULL, NULL,
                                              col_scale + at, NULL, NULL, col_shift + at, ys,
                                              stream);
            }
            continue;
        }
        size_t rows = c.super_rows - first < c.chunk_rows ? c.super_rows - first : c.chunk_rows;
        size_t offset = (first * c.width + lead) * size;
        int last = lead && first + rows == c.super_rows; /* its last super-row is short */
        kernels->col_normalize[dtype](xs + offset, rows - last, c.width, c.width,
                                      mean ? mean_hi : NULL, NULL, col_scale, NULL, NULL,
                                      col_shift, ys + offset, stream);
        if (last) {
            offset += (rows - 1) * c.width * size;
            kernels->col_normalize[dtype](xs + offset, 1, c.width - lead, c.width,
                                          mean ? mean_hi : NULL, NULL, col_scale, NULL, NULL,
                                          col_shift, ys + offset, stream);
        }
    });
    free(param_block);
    return FASTNORM_OK;
}

/* The column path loads a mean, a scale and a shift per vector; folding the mean into the
 * shift, y = x * scale + (shift - mean * scale), saves one load and one subtraction
 * (channels-last (3136, 64) float32 0.78-0.83x the time, (200704, 3) 0.71x; ctypes A/B,
 * 1 thread).  It rounds x * scale where the unfolded form rounds (x - mean) * scale, which
 * adds at most about |mean * scale| ulps-worth of error: so a channel folds only if
 * |mean| <= sqrt(var + eps), where |mean * scale| <= |weight|, the output's own unit, or if
 * its mean or scale is NaN (NaN either way).  Offset data (a mean of 100, a spread of 1)
 * keeps the exact subtraction.  The decision is per channel, so a channel's results never
 * depend on another's statistics: a folded channel's mean becomes 0, which subtracts
 * exactly.  Returns the means to subtract (`centre`, filled) or NULL when every channel
 * folded, and the kernels skip the subtraction. */
static const double *fn_fold_means(size_t channels, const double *mean, const double *var,
                                   double eps, const double *scale, double *shift, double *centre) {
    int all = 1;
    for (size_t c = 0; c < channels; ++c) {
        int fold = isnan(mean[c]) || isnan(scale[c]) ||
                   (fabs(mean[c]) <= sqrt(var[c] + eps) && isfinite(mean[c] * scale[c]));
        centre[c] = fold ? 0.0 : mean[c];
        if (fold) shift[c] -= mean[c] * scale[c];
        all &= fold;
    }
    return all ? NULL : centre;
}

fastnorm_status_t fastnorm_affine(fastnorm_dtype_t dtype, size_t outer, size_t channels, size_t inner,
                                  const void *x, void *y, const double *mean, const double *var,
                                  const void *weight, const void *bias, double eps, int n_threads) {
    int overflow = 0;
    if ((unsigned)dtype >= FASTNORM_DTYPE_COUNT) return FASTNORM_ERR_BAD_DTYPE;
    if (!x || !y || !var) return FASTNORM_ERR_NULL_POINTER;
    size_t total = fn_product(outer, channels, inner, &overflow);
    if (overflow || total == 0) return FASTNORM_ERR_BAD_SHAPE;
    if (!(eps >= 0) || !isfinite(eps)) return FASTNORM_ERR_BAD_VALUE;
    /* fold weight / sqrt(var + eps) and bias per channel in float64; IEEE arithmetic
     * decides a negative variance (NaN) or eps == 0 with a zero variance (inf) */
    double *folded = malloc(sizeof(double) * 3 * channels);
    if (!folded) return FASTNORM_ERR_NO_MEMORY;
    double *scale = folded, *shift = folded + channels, *centre = folded + 2 * channels;
    for (size_t c = 0; c < channels; ++c) {
        scale[c] = fn_param(dtype, weight, c, 1.0) / sqrt(var[c] + eps);
        shift[c] = fn_param(dtype, bias, c, 0.0);
    }
    if (inner < FN_AFFINE_ROW_MIN && mean)
        mean = fn_fold_means(channels, mean, var, eps, scale, shift, centre);
    fastnorm_status_t status = fn_affine(dtype, outer, channels, inner, total, x, y, mean, scale,
                                         shift, n_threads);
    free(folded);
    return status;
}

/* ---- fastnorm_batch_norm_train ------------------------------------------------------ */

/* With one sample, a channel of at most this many bytes is normalized right after its
 * statistics, while it is still in the L2 cache.  Measured (ctypes A/B, 1 thread, Zen 3):
 * (1, 64, 3136) float32 0.75-0.86x the time of statistics then normalize sweeps.  With
 * several samples a channel's rows lie a sample apart, and the per-channel order lost
 * more to the strided reads than it saved: (16, 64, 1024) 1.22-1.37x, (8, 256, 196)
 * 0.96-1.04x; those take the two sweeps. */
#define FN_BN_FUSED_MAX_BYTES (256u << 10)

typedef struct {
    const fastnorm_kernels_t *kernels;
    fastnorm_dtype_t dtype;
    size_t inner;
    const char *x;
    char *y;
    const void *weight, *bias;
    double eps, *mean_out, *var_out;
} fn_bn_job;

/* Statistics of channel c (one row of `inner` values), then the row normalized. */
static void fn_bn_train_channel(const fn_bn_job *job, size_t c) {
    size_t inner = job->inner, offset = c * inner * fn_storage_size(job->dtype);
    double shift = fn_element(job->dtype, job->x, c * inner), mean_shifted, m2;
    job->kernels->row_stats[job->dtype](job->x + offset, NULL, NULL, inner, shift, 1,
                                        &mean_shifted, &m2);
    double mean = shift + mean_shifted;
    double var = isfinite(m2) && isfinite(mean) ? m2 / (double)inner : NAN;
    job->mean_out[c] = mean;
    job->var_out[c] = var;
    double scale = fn_param(job->dtype, job->weight, c, 1.0) / sqrt(var + job->eps);
    /* the mean as the pair (shift, mean_shifted): exact for float64 */
    job->kernels->row_normalize[job->dtype](job->x + offset, NULL, NULL, inner, shift, mean_shifted,
                                            scale, fn_param(job->dtype, job->bias, c, 0.0), NULL,
                                            NULL, job->y + offset, NULL, 0);
}

fastnorm_status_t fastnorm_batch_norm_train(fastnorm_dtype_t dtype, size_t outer, size_t channels,
                                            size_t inner, const void *x, void *y,
                                            const void *weight, const void *bias, double eps,
                                            double *mean_out, double *var_out, int n_threads) {
    int overflow = 0;
    if ((unsigned)dtype >= FASTNORM_DTYPE_COUNT) return FASTNORM_ERR_BAD_DTYPE;
    if (!x || !y || !mean_out || !var_out) return FASTNORM_ERR_NULL_POINTER;
    size_t total = fn_product(outer, channels, inner, &overflow);
    if (overflow || total == 0) return FASTNORM_ERR_BAD_SHAPE;
    if (!(eps >= 0) || !isfinite(eps)) return FASTNORM_ERR_BAD_VALUE;
    int threads = fn_threads(n_threads, total);
    if (outer == 1 && inner >= FN_MOMENTS_ROW_MIN &&
        inner * fn_storage_size(dtype) <= FN_BN_FUSED_MAX_BYTES) {
        fn_bn_job job = {fastnorm_active_kernels(), dtype, inner, (const char *)x, (char *)y,
                         weight, bias, eps, mean_out, var_out};
        FN_PARALLEL_FOR(c, channels, { fn_bn_train_channel(&job, (size_t)c); });
        return FASTNORM_OK;
    }
    /* a statistics sweep, then a normalize sweep */
    fastnorm_status_t status = fastnorm_moments(dtype, outer, channels, inner, x, mean_out,
                                                var_out, n_threads);
    if (status != FASTNORM_OK) return status;
    for (size_t c = 0; c < channels; ++c) var_out[c] /= (double)(outer * inner);
    return fastnorm_affine(dtype, outer, channels, inner, x, y, mean_out, var_out, weight, bias,
                           eps, n_threads);
}

fastnorm_status_t fastnorm_update_running(fastnorm_dtype_t running_dtype, size_t channels,
                                          size_t count, double momentum, const double *mean,
                                          const double *var, void *running_mean,
                                          void *running_var) {
    if (running_dtype != FASTNORM_F32 && running_dtype != FASTNORM_F64) return FASTNORM_ERR_BAD_DTYPE;
    if (channels && (!mean || !var || !running_mean || !running_var)) return FASTNORM_ERR_NULL_POINTER;
    if (count < 2 || !(momentum >= 0.0 && momentum <= 1.0)) return FASTNORM_ERR_BAD_VALUE;
    const double keep = 1.0 - momentum, unbias = (double)count / (double)(count - 1);
    if (running_dtype == FASTNORM_F32) {
        float *rm = (float *)running_mean, *rv = (float *)running_var, keep32 = (float)keep;
        for (size_t c = 0; c < channels; ++c) {
            rm[c] = (float)((double)(keep32 * rm[c]) + momentum * mean[c]);
            rv[c] = (float)((double)(keep32 * rv[c]) + momentum * (var[c] * unbias));
        }
    } else {
        double *rm = (double *)running_mean, *rv = (double *)running_var;
        for (size_t c = 0; c < channels; ++c) {
            rm[c] = keep * rm[c] + momentum * mean[c];
            rv[c] = keep * rv[c] + momentum * (var[c] * unbias);
        }
    }
    return FASTNORM_OK;
}

/* ---- fastnorm_group_norm ------------------------------------------------------------ */

/* Groups of at most this many bytes are normalized right after their statistics, while
 * they are still in the L2 cache: one pass over memory instead of two. */
#define FN_GROUP_FUSED_MAX_BYTES (256u << 10)

typedef struct {
    const fastnorm_kernels_t *kernels;
    fastnorm_dtype_t dtype;
    size_t channels, groups, per_group, spatial, item_size;
    const char *x;
    char *y;
    const void *weight, *bias;
    double eps;
    int stream;
} fn_group_job;


/* Channel row r (of n * channels) with its group's statistics and its own weight / bias. */
static void fn_group_normalize_row(const fn_group_job *job, size_t r, size_t begin, size_t length,
                                   double shift, double mean_shifted, double rstd) {
    size_t channel = r % job->channels, offset = (r * job->spatial + begin) * job->item_size;
    job->kernels->row_normalize[job->dtype](
        job->x + offset, NULL, NULL, length, shift, mean_shifted,
        rstd * fn_param(job->dtype, job->weight, channel, 1.0),
        fn_param(job->dtype, job->bias, channel, 0.0), NULL, NULL, job->y + offset, NULL,
        job->stream);
}

/* Statistics of group item (sample, group), then its channels, read from cache. */
static void fn_group_fused(const fn_group_job *job, size_t item) {
    size_t span = job->per_group * job->spatial;
    const char *x = job->x + item * span * job->item_size;
    double shift = fn_element(job->dtype, x, 0), mean_shifted, m2, mean, rstd;
    job->kernels->row_stats[job->dtype](x, NULL, NULL, span, shift, 1, &mean_shifted, &m2);
    fn_finish(FASTNORM_LAYER_NORM, shift, mean_shifted, m2, (double)span, job->eps, &mean, &rstd);
    for (size_t k = 0; k < job->per_group; ++k)
        fn_group_normalize_row(job, item * job->per_group + k, 0, job->spatial, shift, mean_shifted,
                               rstd);
}

/* Large groups, or too few to share among the threads: statistics of all groups (row
 * segments in parallel), then every channel row (segments in parallel). */
static fastnorm_status_t fn_group_two_pass(const fn_group_job *job, size_t n, int threads) {
    size_t items = n * job->groups, span = job->per_group * job->spatial;
    double *stats = malloc(sizeof(double) * 3 * items);
    if (!stats) return FASTNORM_ERR_NO_MEMORY;
    double *shift = stats, *mean_shifted = stats + items, *rstd = stats + 2 * items;
    fastnorm_status_t status = fn_moments_rows(job->kernels, job->dtype, 1, items, span, job->x,
                                               shift, mean_shifted, rstd, threads);
    if (status != FASTNORM_OK) {
        free(stats);
        return status;
    }
    for (size_t i = 0; i < items; ++i) { /* rstd holds m2 until here */
        double mean;
        fn_finish(FASTNORM_LAYER_NORM, shift[i], mean_shifted[i], rstd[i], (double)span, job->eps,
                  &mean, &rstd[i]);
    }
    size_t segments = (job->spatial + FN_ROW_SEGMENT - 1) / FN_ROW_SEGMENT;
    FN_PARALLEL_FOR(part, n * job->channels * segments, {
        size_t r = (size_t)part / segments, begin = ((size_t)part % segments) * FN_ROW_SEGMENT;
        size_t length = job->spatial - begin < FN_ROW_SEGMENT ? job->spatial - begin : FN_ROW_SEGMENT;
        size_t item = r / job->per_group;
        fn_group_normalize_row(job, r, begin, length, shift[item], mean_shifted[item], rstd[item]);
    });
    free(stats);
    return FASTNORM_OK;
}

fastnorm_status_t fastnorm_group_norm(fastnorm_dtype_t dtype, size_t n, size_t channels, size_t groups,
                                      size_t spatial, const void *x, void *y, const void *weight,
                                      const void *bias, double eps, int n_threads) {
    int overflow = 0;
    if ((unsigned)dtype >= FASTNORM_DTYPE_COUNT) return FASTNORM_ERR_BAD_DTYPE;
    if (!x || !y) return FASTNORM_ERR_NULL_POINTER;
    size_t total = fn_product(n, channels, spatial, &overflow);
    if (overflow || total == 0 || groups == 0 || channels % groups) return FASTNORM_ERR_BAD_SHAPE;
    if (!(eps >= 0) || !isfinite(eps)) return FASTNORM_ERR_BAD_VALUE;
    size_t size = fn_storage_size(dtype);
    fn_group_job job = {fastnorm_active_kernels(), dtype, channels, groups, channels / groups,
                        spatial, size, (const char *)x, (char *)y, weight, bias, eps,
                        fn_stream(x, y, total * size, FN_STREAM_MIN_BYTES_OTHERS)};
    int threads = fn_threads(n_threads, total);
    size_t items = n * groups;
    if (job.per_group * spatial * size > FN_GROUP_FUSED_MAX_BYTES || items < 4 * (size_t)threads)
        return fn_group_two_pass(&job, n, threads);
    FN_PARALLEL_FOR(item, items, fn_group_fused(&job, (size_t)item););
    return FASTNORM_OK;
}
