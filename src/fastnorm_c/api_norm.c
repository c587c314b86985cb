/*
 * api_norm.c - fastnorm_norm: LayerNorm and RMSNorm over the middle axis of (outer, middle,
 * inner), with the fused residual add.  Rows (inner == 1) of a few vectors take rows_short
 * (fn_norm_short_rows), longer ones the row kernels in one of four orders chosen by size
 * (fn_norm_run); a non-trailing axis takes the column kernels.
 */
#include "api_internal.h"

/* Long rows take both passes a batch of rows of about this many bytes at a time (measured
 * against 256 KB and 4 MB: see fn_norm_long_rows). */
#define FN_LONG_ROW_BATCH_BYTES (1u << 20)
/* ... but rows whose weight or bias takes FN_LONG_PARAM_MIN_BYTES or more take both passes
 * over batches of up to FN_LONG_PARAM_BATCH_BYTES of rows, and the normalize pass goes a
 * segment at a time across the batch's rows (fn_long_normalize), so that each segment of
 * the parameters is read once a batch.  A batch of one such row read its 4 MB weight and
 * 4 MB bias again for every row, from the L3 cache, as well as the row itself: 20 MB a
 * row for LayerNorm against the copy's 8.  Emerald Rapids Xeon, in-process A/B, float32,
 * time per call, 1 thread (2 threads), each order once: batches of 4 rows against one,
 * LayerNorm 16x1048576 0.75 / 0.72 (0.77), RMSNorm 0.83 / 0.80 (0.87), bfloat16 LayerNorm
 * 0.63; of 8 rows against 4, 0.92 / 0.90; of 16 against 8, 0.90 / 0.90 (0.98 / 0.96); all
 * 64 rows against 8, 64x262144 0.82 / 0.86 (0.96 / 0.96), 32x524288 0.86 / 0.88; and at
 * 256 MB, 64 rows of 1048576 values against batches of 16 rows (64 MB), 0.84 / 0.85. */
#define FN_LONG_PARAM_MIN_BYTES (1u << 20)
#define FN_LONG_PARAM_BATCH_BYTES (256u << 20)
/* ... and, with the parameters, at most a quarter of the last-level cache, which must keep
 * the batch's rows from the statistics to the normalize pass beside the parameters (where
 * the parameters alone take that much, the batches stay at FN_LONG_PARAM_BATCH_BYTES: one
 * 8 MB row a batch with its 16 MB weight and bias took 1.31x the time of all of 8x2097152
 * at once).  On the Zen 3 VM (32 MB L3, shared with the neighbours) batches of 64 MB read
 * every row twice from memory.  In-process A/B against the 256 MB bound alone, float32,
 * time per call, two runs: 1 thread, LayerNorm 64x262144 (6 rows a batch) 0.90 / 0.89,
 * 32x524288 (2 rows) 0.91 / 0.83, RMSNorm 64x262144 0.91 / 0.88, 16x1048576 (1 row) 0.98 /
 * 0.86; 2 threads LayerNorm 64x262144 0.97 / 0.94; LayerNorm 16x1048576 and 8x2097152,
 * whose parameters take a quarter or more, 0.98-1.01.  An eighth for the rows alone (4 MB
 * batches) did as well on 64x262144 (0.80-0.85) but cut 8x2097152 to one row a batch; a
 * half, the parameters not subtracted, lost (16x1048576 1.14, 64x262144 1.09).  On the
 * Xeon's 300 MB L3 the benchmark's long rows keep one batch.  Where the parameters take
 * the quarter or more but one row fits beside them in half the cache, batches are of one
 * row (FN_LONG_ROW_BATCH_BYTES) after all: on Zen 4 (32 MB L3) LayerNorm 16x1048576, a
 * 4 MB row with 8 MB of weight and bias, all 16 rows a batch read each row twice from
 * memory; in-process A/B, one row a batch against all, time per call: 0.80 (2 threads
 * 0.90); two rows a batch 1.02 (1.05), four 1.19 (1.11). */
#define FN_LONG_PARAM_LLC_SHARE 4
/* On one thread the normalize pass of inputs past FN_PREFETCH_MIN_BYTES goes across the
 * batch's rows (two or more) a span of this many elements at a time, not a segment, so
 * that the span's weight and bias stay in L1 for the batch's rows, and in the last batch
 * (with no next batch to prefetch) it prefetches its own rows FN_LONG_PREFETCH_BYTES
 * ahead.  Xeon VM (AVX-512, 48 KB L1, 2 MB L2), in-process A/B against segments and no
 * prefetch in the last batch, time per call, each order of the builds: float32 LayerNorm
 * 16x1048576 0.90-0.94, 256x65536 0.95, 64x262144 0.94-0.96, 2048x20000 0.88-0.89,
 * float64 16x1048576 0.88-0.91, float16 0.90-0.91, bfloat16 RMSNorm 0.94-0.96, float32
 * RMSNorm 0.98-0.99; one row of 4194304 values lost 3-10% in spans. */
#define FN_LONG_SPAN 2048
#define FN_LONG_PREFETCH_BYTES 2048
/* Where a call reads under FN_AHEAD_MAX_READ_BYTES (x, and the residual where there is
 * one), rows of at most the family's ahead_row_max bytes (kernels.h: AVX2 16 KB, AVX-512
 * 16 KB or on AMD's cores 4 KB, scalar 4 KB) take their statistics one row ahead: row r +
 * 1's statistics run before row r's normalize pass, so the latency of row r's division
 * and square root (about 50 cycles with nothing else to do) overlaps them.  Measured (Zen
 * 4, AVX-512, `python -m fastnorm bench --out`, two runs each, alternating builds), time
 * per call: LayerNorm 64x768 0.87-0.93x, 512x768 0.89-0.94x (2 threads 0.84-0.92x),
 * 1024x768 0.94-0.97x; RMSNorm 64x768 0.85-0.86x, 512x768 0.79-0.89x.  It lost for 8 KB
 * rows (two rows and an output no longer fit the L1 cache: 128x2048 1.2x; on Zen 4 again
 * in the sixty-fifth session, simd_avx512.h) and for inputs past the
 * last-level cache's easy reach (4096x768, 12 MB: 1.4x in a tight loop; on Zen 3, AVX2,
 * in-process A/B: 4096x768 1.16x, 3500x768 1.12-1.25x, 8192x768 1.31x).  Up to 8 MB,
 * where the output is not streamed either (FN_STREAM_MIN_BYTES), it wins over the
 * prefetching row path (Zen 3, AVX2, in-process A/B against the 4 MB limit before, time
 * per call, 1 thread: float32 LayerNorm 1400x768 0.72-0.86x, 2048x768 0.86x, 2600x768
 * 0.83-0.85x; RMSNorm 1400x768 0.86-0.87x, 2048x768 1.01-1.02x, 2600x768 0.87-0.96x;
 * bfloat16 4096x768 LayerNorm 0.73-0.98x, RMSNorm 0.79x; 2 threads: LayerNorm 2048x768
 * 0.86-0.90x, RMSNorm 2600x768 1.00x).  With a residual, whose four arrays take twice the
 * cache, 4 MB inputs already lost (LayerNorm 1400x768 1.05x, RMSNorm 1.02x).  On Zen 3 the
 * AVX2 family's rows of 8 and 16 KB win too (simd_avx2.h).  Past that size, LayerNorm rows
 * too short for the family's next-row prefetch (prefetch_row_min: AVX-512 rows under 2 KB)
 * still take their statistics a row ahead, but in the kernels' own loops, not
 * row_stats_normalize's (fn_norm_rows_ahead): the latency of each row's finish then
 * overlaps the next row's statistics.  Zen 5, in-process A/B, 1 thread, time per call:
 * bfloat16 32768x768 0.89-0.93 (fused residual 0.93), float16 0.83-0.85 (2 threads 0.94),
 * 131072x320 0.82, float32 65536x384 0.95-0.97; RMSNorm lost (float32 65536x384 1.19-1.27,
 * bfloat16 on 2 threads 1.18) and keeps the row order, as do prefetching rows (float32
 * 32768x768 1.34 with the prefetch moved a row on) and the fused loop (1.9).  Where that
 * loop streams (fn_stream_fused), RMSNorm takes it too: bfloat16 32768x768 0.79-0.81,
 * float16 0.76-0.88 (AVX-512: simd_avx512.h). */
#define FN_AHEAD_MAX_READ_BYTES (8u << 20)

/* Columns per work item when a norm reduces over a non-trailing axis. */
#define FN_COLUMN_CHUNK 256

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
 * parameter's (RMSNorm with a weight: 1.03-1.08x), so such calls keep the row order.
 * Not where the output is streamed (FN_STREAM_MIN_BYTES): the row order overlaps a row's
 * normalize pass with reading the next (fn_row_normalize's prefetch), the group's passes
 * do not.  On a Xeon (Emerald Rapids, 48 KB L1, 2-vCPU VM), groups against rows, time per
 * call: streamed float32 8192x4096 1.31, 2048x3072 1.32, 1024x5120 1.27, bfloat16
 * 8192x4096 1.56, float64 1024x4096 1.11, 2 threads 8192x4096 1.30; in cache 256x4096
 * 0.99, 256x5120 0.94, 2 threads 128x4096 1.01.  (Prefetching the next group's rows in the
 * normalize pass won back a fifth of that.)  On AMD's cores (the AMD tuning) streamed rows
 * take the groups still, with statistics that do not read ahead (Zen 4, sixty-fifth
 * session, in-process A/B against the row order with the statistics reading ahead, time
 * per call, 1 thread: LayerNorm float32 8192x4096 0.74 (2 threads 0.95), 2048x3072 0.81,
 * float64 2048x4096 0.77, float16 8192x4096 0.77, bfloat16 0.78; either change alone was
 * mixed: groups 0.95 (2 threads 1.08), 1024x4096 1.10, the statistics alone 1.01-1.08). */
#define FN_GROUP_MIN_BYTES 32768
#define FN_GROUP_ROWS 8
#define FN_PARAM_BLOCK 1024

/* A row norm of at least this many rows reads its weight and bias from a copy placed like
 * y when they are not: every vector of every row loads them, the normalize pass works on
 * y's vector boundaries, and a load that straddles two cache lines costs a second access.
 * NumPy places arrays 16 bytes past a line, where the parameters usually sit like y
 * already.  The copy costs two rows' parameters per call. */
#define FN_ALIGN_PARAMS_MIN_ROWS 16
/* ... or on more than one thread, this many: the other threads read the copy from the
 * cache of the core that wrote it.  Zen 3, float32 LayerNorm with misplaced parameters, 2
 * threads, time per call without the copy over with it, two runs: 43x768 0.70 / 0.88,
 * 64x768 0.79 / 0.96, 128x768 0.87 / 0.93; 256x768 0.94 / 1.05, 512x768 0.92 / 0.99,
 * 1024x768 1.15 / 1.03, 4096x768 0.96 / 0.92 (on 1 thread, from 128 rows, 1.03-1.07 /
 * 1.03-1.05). */
#define FN_ALIGN_PARAMS_MIN_ROWS_THREADS 256
/* ... unless each is larger than this: such rows are memory-bound, and the copy's own
 * traffic costs more than its placement saves (ab_builds, Zen 3, 1 thread, LayerNorm
 * without the copy: 16x1048576 0.92-0.94x the time (2 threads 0.89x), 64x262144 and
 * 32x524288 0.99-1.01x; but 32x65536, whose parameters stay in L2, 1.06-1.15x). */
#define FN_ALIGN_PARAMS_MAX_BYTES (2u << 20)
/* A bfloat16 call of at least this many rows makes its parameters' NaNs canonical while
 * copying them (about 0.6 cycles per parameter), so that the stores skip their NaN test
 * (3 operations per 8 values of every row); fewer rows keep the test (fn_row_params). */
#define FN_CANONICAL_PARAMS_MIN_ROWS 8
/* A call of at most this many rows leaves weight and bias in natural order where the
 * family's row normalize takes them reordered (kernels.h, param_block, AVX2 bfloat16):
 * the pass goes a vector at a time instead (FN_STORE_PARAMS_NATURAL), which costs less
 * than the copy.  In-process A/B against the copy, Zen 3, bfloat16, time per call, 1
 * thread: LayerNorm 1x768 0.83, 1x4096 0.75, 1x16384 0.70, 1x1000000 0.53 (2 threads
 * 0.38), 2x4096 0.84-0.92, 2x1000000 0.74; RMSNorm 1x768 0.87, 1x4096 0.92, 1x1000000
 * 0.77, 2x4096 1.01-1.03, 2x16384 1.04, 2x1000000 0.98.  From three rows the copy pays
 * (RMSNorm 3x4096 1.14, 8x4096 1.18-1.37, 16x1048576 1.29; LayerNorm 3x4096 and 4x4096
 * 0.97, 8x4096 1.02). */
#define FN_NATURAL_PARAMS_MAX_ROWS 2

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
 * that is not natural (from FN_NATURAL_PARAMS_MAX_ROWS + 1 rows), and placed like y
 * (fn_param_phase) from FN_ALIGN_PARAMS_MIN_ROWS rows (FN_ALIGN_PARAMS_MIN_ROWS_THREADS
 * on more than one thread) if they are not (and take at most
 * FN_ALIGN_PARAMS_MAX_BYTES each).  From
 * FN_CANONICAL_PARAMS_MIN_ROWS rows a bfloat16 copy has its NaNs made canonical and the
 * flags include FN_STORE_NAN_CANONICAL, as they do without parameters; otherwise the
 * kernels keep the bfloat16 store's NaN test.  Returns the flags, or -1 without memory for
 * a copy the kernels need; *block receives the copy to free (or NULL). */
static int fn_row_params(const fastnorm_kernels_t *kernels, fastnorm_dtype_t dtype, size_t rows,
                         size_t n, const void *y, int threads, const void **weight,
                         const void **bias, void **block) {
    int bf16 = dtype == FASTNORM_BF16;
    size_t order = kernels->param_block[dtype], size = fn_compute_size(dtype);
    *block = NULL;
    if (!*weight && !*bias) return bf16 ? FN_STORE_NAN_CANONICAL : 0;
    if (order && rows <= FN_NATURAL_PARAMS_MAX_ROWS) return FN_STORE_PARAMS_NATURAL;
    /* pairs in a family order start at the row's start, so their blocks on a boundary */
    size_t phase = order ? 0 : fn_param_phase(y, fn_storage_size(dtype), n, size);
    size_t stride = (n * size + 63) / 64 * 64; /* bias: as far past weight as a line multiple */
    int misplaced = (*weight && ((uintptr_t)*weight - phase) % 64) ||
                    (*bias && ((uintptr_t)*bias - phase) % 64);
    size_t place_rows = threads > 1 ? FN_ALIGN_PARAMS_MIN_ROWS_THREADS : FN_ALIGN_PARAMS_MIN_ROWS;
    int place = rows >= place_rows && misplaced &&
                n * size <= FN_ALIGN_PARAMS_MAX_BYTES;
    if (!order && !place) return 0;
    char *copy = fn_malloc_aligned(stride + n * size + phase, block);
    if (!copy) return order ? -1 : 0; /* a copy in place only helps: the caller's serve */
    int canonical = bf16 && rows >= FN_CANONICAL_PARAMS_MIN_ROWS;
    if (*weight) *weight = fn_copy_params(copy + phase, *weight, n, size, order, canonical);
    if (*bias) *bias = fn_copy_params(copy + phase + stride, *bias, n, size, order, canonical);
    return canonical ? FN_STORE_NAN_CANONICAL : 0;
}

/* Whether the row kernels stream every row of y whole, so that a cache line two rows share
 * takes streaming stores alone: rows that start on 4 bytes (kb_stream_part's 4-byte pieces,
 * fn_stream_bytes), and with parameters in a family order (param_block, whose pairs run
 * from the row's start) on a vector's storage boundary; or rows of a segment or more,
 * whose two edges are a small part of them.  A row that starts elsewhere takes plain
 * stores into lines its neighbours stream, and each such store flushes the line's
 * write-combining buffer and reads the line.  In-process A/B, Zen 3, 1 thread, time per
 * call with plain stores against streaming such rows: float16 LayerNorm 65536x257 0.43;
 * AVX2 bfloat16 LayerNorm 65536x258 0.62, 65536x260 0.35, 32768x516 0.49, 16384x1028
 * 0.52, RMSNorm 65536x258 0.44. */
static int fn_rows_stream_whole(const fastnorm_kernels_t *kernels, fastnorm_dtype_t dtype,
                                size_t n, const void *y, int row_store) {
    size_t size = fn_storage_size(dtype), order = kernels->param_block[dtype];
    size_t boundary = order && !(row_store & FN_STORE_PARAMS_NATURAL) ? order / 2 * size : 4;
    return n >= FN_ROW_SEGMENT || ((uintptr_t)y % boundary == 0 && n * size % boundary == 0);
}

/* The fused residual in float32 and float64 streams y from fn_llc_stream_min_bytes (as rows
 * do on one thread), in the half dtypes from FN_STREAM_MIN_BYTES_OTHERS (bfloat16 8192x768
 * lost 1.05-1.06 streamed: their rows are compute-bound), but h with y only from this
 * size; under it the statistics pass stores h plainly.  Zen 3, in-process A/B, time per
 * call, y streamed and h plain over both stored plainly (the 16 MB bound before), each
 * order of the builds: float32 LayerNorm 4096x768 (12 MB) 0.80-0.84, RMSNorm 0.79-0.83,
 * 3072x768 0.78-0.80, 2800x768 0.80, 2 threads 4096x768 0.77-0.89, float64 2048x768
 * 0.76-0.80.  Streaming h too lost there (LayerNorm 4096x768 2.0, 3072x768 0.99-1.08),
 * and from this size plain h lost to streamed h (32768x768 1.03-1.10, 2 threads 1.10). */
#define FN_RESIDUAL_H_STREAM_MIN_BYTES (16u << 20)

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
 * read for ownership of half as many bytes).  Under FN_RESIDUAL_H_STREAM_MIN_BYTES, where
 * the last-level cache holds much of h, y streams alone (below). */
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

/* Whether the call's input is large enough to prefetch for (FN_PREFETCH_MIN_BYTES). */
static int fn_prefetch_input(const fn_norm_job *job) {
    return job->outer * job->middle * job->item_size >= FN_PREFETCH_MIN_BYTES;
}

/* Whether a row's normalize pass prefetches the next row (fn_row_normalize): its length in
 * bytes within the family's prefetch_row_min ... prefetch_row_max. */
static int fn_next_row_prefetched(const fn_norm_job *job) {
    size_t row_bytes = job->middle * job->item_size;
    return fn_prefetch_input(job) && row_bytes >= job->kernels->prefetch_row_min &&
           row_bytes <= job->kernels->prefetch_row_max;
}

/* Row r's statistics pass; prefetch: it reads ahead itself (kernels.h, row_stats). */
static void fn_row_stats(const fn_norm_job *job, size_t r, fn_row_moments *m, int prefetch) {
    size_t n = job->middle;
    fn_norm_spans s = fn_spans(job, r * n * job->item_size);
    m->shift = fn_row_shift(job, r);
    job->kernels->row_stats[job->dtype](s.x, s.residual, s.stats_h, n, m->shift,
                                        job->kind == FASTNORM_LAYER_NORM, prefetch,
                                        &m->mean_shifted, &m->m2);
}

/* Row r's statistics again, exactly, where the kernels' came out non-finite
 * (fn_exact_if_overflowed), from what the normalize pass reads: x and the residual, or h
 * where the statistics pass wrote it (it may have replaced x). */
static void fn_row_exact(const fn_norm_job *job, size_t r, double shift, double *mean_shifted,
                         double *m2) {
    if (isfinite(*mean_shifted) && isfinite(*m2)) return; /* spans only when needed */
    fn_norm_spans s = fn_spans(job, r * job->middle * job->item_size);
    fn_exact_if_overflowed(job->dtype, s.in, s.in_residual, 1, job->middle, 0,
                           job->kind == FASTNORM_LAYER_NORM, shift, mean_shifted, m2);
}

/* Row r's mean and rstd (stored where the caller asked for them); returns rstd. */
static double fn_row_finish(const fn_norm_job *job, size_t r, fn_row_moments *m) {
    double mean, rstd;
    fn_row_exact(job, r, m->shift, &m->mean_shifted, &m->m2);
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

/* Row r's normalize pass, prefetching row `next` (the next the statistics pass reads) where
 * the family asks for it (FN_PREFETCH_MIN_BYTES). */
static void fn_row_normalize(const fn_norm_job *job, size_t r, const fn_row_moments *m,
                             double rstd, size_t next) {
    size_t row_bytes = job->middle * job->item_size;
    int prefetch = next < job->outer && fn_next_row_prefetched(job);
    fn_row_normalize_span(job, r, m->shift, m->mean_shifted, rstd, 0, job->middle,
                          prefetch ? job->x + next * row_bytes : NULL);
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
    /* the AMD tuning's statistics do not read ahead (FN_GROUP_MIN_BYTES) */
    int prefetch = fn_prefetch_input(job) && fastnorm_tuning() != FASTNORM_TUNING_AMD;
    for (size_t r = first; r < end; ++r) {
        fn_row_stats(job, r, &m[r - first], prefetch);
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
    fn_row_stats(job, r, &m, fn_prefetch_input(job) && !fn_next_row_prefetched(job));
    double rstd = fn_row_finish(job, r, &m); /* may replace m's statistics: first */
    fn_row_normalize(job, r, &m, rstd, r + 1);
}

/* Whether rows a row ahead take row_stats_normalize with streaming stores: where the
 * family's loop streams (kernels.h, stream_fused) and the pair fits it (a weight, no
 * residual); elsewhere it would run its two kernels the other way round. */
static int fn_stream_fused(const fn_norm_job *job) {
    return !job->residual && job->weight && (job->row_store & FN_STORE_STREAM) &&
           (job->kernels->stream_fused[job->dtype] >> job->kind & 1);
}

/* Rows begin ... end - 1 with the statistics one row ahead (ahead_row_max), in inputs
 * under FN_AHEAD_MAX_READ_BYTES without a residual in one kernel loop with the previous
 * row's normalize pass
 * (row_stats_normalize: bench --out, alternating builds, three runs, time per call:
 * RMSNorm 64x768 0.88-0.94x, 512x768 0.91-0.92x, 1024x768 0.89-0.90x; LayerNorm 512x768
 * 0.94x, 1024x768 0.94-0.96x), and in larger ones where the family's loop takes the
 * streaming stores too (fn_stream_fused: bfloat16 LayerNorm 32768x768 0.90-0.92 against
 * the two kernels, RMSNorm 0.79-0.81 against its row order).  Each row's outputs are
 * written after the next row's statistics read its inputs, or while they do, which is
 * right in place too: row r's output overlaps no other row's inputs (the Python layer
 * makes sure of that for every output). */
static void fn_norm_rows_ahead(const fn_norm_job *job, size_t begin, size_t end) {
    size_t n = job->middle, bytes = n * job->item_size;
    int center = job->kind == FASTNORM_LAYER_NORM;
    int fused = (!job->residual && job->outer * bytes < FN_AHEAD_MAX_READ_BYTES) ||
                fn_stream_fused(job);
    int prefetch = !fused && fn_prefetch_input(job) && !fn_next_row_prefetched(job);
    fn_row_moments m, next;
    double first_center = NAN; /* row r + 1's, from the call before (kernels.h) */
    if (begin < end) fn_row_stats(job, begin, &next, prefetch);
    for (size_t r = begin; r < end; ++r) {
        m = next;
        double rstd = fn_row_finish(job, r, &m);
        if (r + 1 < end && fused) { /* both in one loop (kernels.h) */
            const char *x = job->x + r * bytes;
            next.shift = fn_row_shift(job, r + 1);
            job->kernels->row_stats_normalize[job->dtype](
                x + bytes, n, next.shift, center, &next.mean_shifted, &next.m2, x, m.shift,
                center ? m.mean_shifted : 0.0, rstd, 0.0, job->weight, job->bias,
                job->y + r * bytes, job->row_store, r + 2 < end ? x + 2 * bytes : NULL,
                fn_center_handoff(&first_center));
            continue;
        }
        if (r + 1 < end) fn_row_stats(job, r + 1, &next, prefetch);
        fn_row_normalize(job, r, &m, rstd, r + 2);
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
    /* Batches of one row in the AMD tuning read no further ahead than the core does
     * (Zen 4, in-process A/B, time per call: LayerNorm 16x1048576 0.83 (2 threads 0.86),
     * RMSNorm 0.93; longer batches lost, 2048x20000 1.09, or were level, 256x65536 0.98) */
    int prefetch = fn_prefetch_input(job) &&
                   !(batch->count == 1 && fastnorm_tuning() == FASTNORM_TUNING_AMD);
    job->kernels->row_stats[job->dtype](spans.x, spans.residual, spans.stats_h,
                                        fn_segment_length(n, s), batch->shift[b],
                                        job->kind == FASTNORM_LAYER_NORM, prefetch,
                                        &batch->part_mean[item], &batch->part_m2[item]);
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
        fn_row_exact(job, batch->first + b, batch->shift[b], &batch->mean_shifted[b], &m2);
        fn_finish(job->kind, batch->shift[b], batch->mean_shifted[b], m2, (double)job->middle,
                  job->eps, &mean, &batch->rstd[b]);
        fn_put(job->dtype, job->mean_out, batch->first + b, mean);
        fn_put(job->dtype, job->rstd_out, batch->first + b, batch->rstd[b]);
    }
}

/* The normalize pass of item `item` of the batch: span item / count, of `span` elements,
 * of its row item % count, so that consecutive items share a span of the parameters
 * (FN_LONG_PARAM_MIN_BYTES).  `ahead` (one thread): it prefetches the same span of x in
 * the next batch, which the next statistics pass reads, or in the last batch (where spans
 * are FN_LONG_SPAN long) its own row FN_LONG_PREFETCH_BYTES on. */
static void fn_long_normalize(const fn_norm_job *job, const fn_long_batch *batch, size_t item,
                              size_t span, int ahead) {
    size_t b = item % batch->count, s = item / batch->count, n = job->middle;
    size_t r = batch->first + b, begin = s * span;
    const char *next = NULL;
    if (ahead && r + batch->count < job->outer)
        next = job->x + ((r + batch->count) * n + begin) * job->item_size;
    else if (ahead && span == FN_LONG_SPAN)
        next = job->x + (r * n + begin) * job->item_size + FN_LONG_PREFETCH_BYTES;
    fn_row_normalize_span(job, r, batch->shift[b], batch->mean_shifted[b], batch->rstd[b], begin,
                          n - begin < span ? n - begin : span, next);
}

/* Rows longer than FN_ROW_SEGMENT: segment partials in parallel, merged per row in order,
 * then the segments normalized in parallel.  Rows go through both passes a batch of about
 * FN_LONG_ROW_BATCH_BYTES at a time, so that the second pass reads them from cache, not
 * from memory (ctypes A/B against all statistics first, float32, median of 9: LayerNorm
 * 2048x20000 0.77x the time (2 threads 0.94x), 256x65536 0.92x (0.91x), 16x1048576
 * 0.92-0.97x (0.80x), RMSNorm 16x1048576 0.90x; 256 KB batches lost on 2 threads
 * (2048x20000 1.21x), 4 MB ones gained less on 1); rows with parameters of 1 MB or more
 * take larger batches (FN_LONG_PARAM_MIN_BYTES).  On more than one thread the next
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
    size_t params = ((job->weight != NULL) + (job->bias != NULL)) * n * fn_compute_size(job->dtype);
    size_t share = fastnorm_llc_bytes() / FN_LONG_PARAM_LLC_SHARE, param_batch = FN_LONG_PARAM_BATCH_BYTES;
    if (share > params && share - params < param_batch) param_batch = share - params;
    if (share <= params && n * size + params <= 2 * share) param_batch = 0; /* a row a batch */
    if (params && n * fn_compute_size(job->dtype) >= FN_LONG_PARAM_MIN_BYTES &&
        param_batch / (n * size) > batch)
        batch = param_batch / (n * size);
    if (batch > rows) batch = rows;
    size_t per_batch = 2 * batch * segments + 3 * batch;
    /* one thread's normalize pass: spans where several rows share them */
    size_t span = fn_prefetch_input(job) && batch > 1 ? FN_LONG_SPAN : FN_ROW_SEGMENT;
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
                fn_long_normalize(job, now, (size_t)item, FN_ROW_SEGMENT, 0);
            });
        } else {
            size_t spans = (n + span - 1) / span;
            FN_PARALLEL_FOR(item, now->count * spans,
                            fn_long_normalize(job, now, (size_t)item, span, 1););
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
    int prefetch = items * job->middle * FN_COLUMN_CHUNK * size >= FN_COL_PREFETCH_MIN_BYTES;
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
                                            center, prefetch, mean_shifted, m2);
        for (size_t j = 0; j < width; ++j) {
            double shift = center ? fn_element(job->dtype, x, j) : 0.0, mean, rstd;
            fn_exact_if_overflowed(job->dtype, x + j * size, NULL, job->middle, 1, job->inner,
                                   center, shift, &mean_shifted[j], &m2[j]);
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
    size_t read_bytes = job->outer * row_bytes * (job->residual ? 2 : 1);
    if (row_bytes <= job->kernels->ahead_row_max[fastnorm_tuning()] &&
        (read_bytes < FN_AHEAD_MAX_READ_BYTES ||
         ((job->kind == FASTNORM_LAYER_NORM || fn_stream_fused(job)) &&
          row_bytes < job->kernels->prefetch_row_min))) {
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
    if (job->weight && job->bias && row_and_params > FN_GROUP_MIN_BYTES && group > 1 &&
        (!(job->row_store & FN_STORE_STREAM) || fastnorm_tuning() == FASTNORM_TUNING_AMD)) {
        FN_PARALLEL_FOR(g, (job->outer + group - 1) / group, {
            size_t first = (size_t)g * group;
            fn_norm_row_group(job, first, first + group < job->outer ? first + group : job->outer);
        });
        return FASTNORM_OK;
    }
    FN_PARALLEL_FOR(r, job->outer, fn_norm_row(job, (size_t)r););
    return FASTNORM_OK;
}

/* Rows of at most the family's rows_short_max elements (a few vectors): each thread's
 * share of the rows in one rows_short call, a block of rows read from L1 in each pass.  A
 * row's path depends on its length alone, so results never depend on the thread count,
 * the call's other arguments or which Python path made it. */
static void fn_norm_short_rows(const fn_norm_job *job, int threads) {
    size_t n = job->middle, row = n * job->item_size, csize = fn_compute_size(job->dtype);
    FN_PARALLEL_FOR(t, threads, {
        size_t first = job->outer * (size_t)t / (size_t)threads;
        size_t rows = job->outer * (size_t)(t + 1) / (size_t)threads - first;
        job->kernels->rows_short[job->dtype](
            job->x + first * row, job->residual ? job->residual + first * row : NULL,
            job->residual_out ? job->residual_out + first * row : NULL, rows, n,
            job->kind == FASTNORM_LAYER_NORM, job->eps, job->weight, job->bias, 0,
            job->y + first * row, job->mean_out ? (char *)job->mean_out + first * csize : NULL,
            job->rstd_out ? (char *)job->rstd_out + first * csize : NULL);
    });
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
    int threads = fn_threads(n_threads, total);
    size_t bytes = total * fn_storage_size(dtype);
    int stream = fn_stream(x, y, bytes,
                           !residual && inner == 1 ? fn_row_stream_min_bytes(threads)
                           : residual && fn_storage_size(dtype) > 2 ? fn_llc_stream_min_bytes()
                                                                    : FN_STREAM_MIN_BYTES_OTHERS);
    if (kind == FASTNORM_RMS_NORM) bias = NULL; /* RMSNorm has no bias */
    const fastnorm_kernels_t *kernels = fastnorm_active_kernels();
    void *param_block = NULL;
    int row_store = 0;
    int short_rows = inner == 1 && middle <= kernels->rows_short_max[dtype];
    if (inner == 1 && !short_rows) { /* the column path takes weight and bias per row, as scalars */
        row_store = fn_row_params(kernels, dtype, outer, middle, y, threads, &weight, &bias,
                                  &param_block);
        if (row_store < 0) return FASTNORM_ERR_NO_MEMORY;
        if (!fn_rows_stream_whole(kernels, dtype, middle, y, row_store)) stream = 0;
    }
    fn_norm_job job = {kernels, kind, dtype, outer, middle, inner,
                       fn_storage_size(dtype), (const char *)x, (const char *)residual,
                       (char *)residual_out, (char *)y, weight, bias, eps, mean_out, rstd_out,
                       stream, stream | row_store,
                       residual_out && (!stream || bytes < FN_RESIDUAL_H_STREAM_MIN_BYTES ||
                                        fn_storage_size(dtype) == 2 || residual_out == x ||
                                        residual_out == residual)};
    if (short_rows) {
        fn_norm_short_rows(&job, threads);
        return FASTNORM_OK;
    }
    fastnorm_status_t status = fn_norm_run(&job, threads);
    free(param_block);
    return status;
}
