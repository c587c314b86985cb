/*
 * api_group_norm.c - fastnorm_group_norm: GroupNorm (and InstanceNorm, one channel a group)
 * over (n, channels, spatial), each (sample, group) span normalized right after its
 * statistics where it fits the L2 cache; fastnorm_group_norm_channels_last: the same over
 * (n, spatial, channels), by the column kernels, a sample right after its statistics where
 * it fits the L2 cache.
 */
#include "api_internal.h"

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
    /* the statistics read ahead (col_stats, and row_stats for the fused groups): the input
     * is past FN_COL_PREFETCH_MIN_BYTES; (32, 64, 56, 56) float32 in NCHW 0.89x the time on 1
     * and 2 threads (Zen 5) */
    int prefetch;
    /* small maps (fn_group_table_fill): weight and bias spread over each channel's positions */
    const char *table_w, *table_b;
} fn_group_job;

/* The weight and bias of one sample as tables of channels * spatial values, channel c's
 * value repeated over its positions, so that a group's span is one row with per-position
 * parameters (rows_short, row_normalize): for groups of small maps, where a call or a
 * parameter per channel cost more than the channel's work.  Built per call and per
 * thread (fn_group_table_fill), so each is kept to FN_GROUP_TABLE_MAX_BYTES: at most 2 MB
 * a thread. */
#define FN_GROUP_TABLE_MAX_BYTES (1u << 20)

/* Bytes of one thread's tables (weight and bias), 0 where neither is given. */
static size_t fn_group_table_bytes(const fn_group_job *job) {
    if (!job->weight && !job->bias) return 0;
    return 2 * job->channels * job->spatial * fn_compute_size(job->dtype);
}

/* This thread's own tables at `table` (fn_group_table_bytes), filled for the channels of
 * group items first ... last - 1 (items: sample * groups + group).  Each thread fills its
 * own, for its own share: one table filled by one core and read by the others (their L2
 * caches fetching its lines from the first core's, every call) cost more than the work
 * it saved.  In-process A/B, Zen 3, float32, 2 threads, time per call, tables per thread
 * over one shared table, each order of the builds: (1, 512, 8, 8) 0.26-0.32, (16, 512, 8,
 * 8) 0.73-0.90, (16, 192, 13, 13) 0.69-0.89 (float16 0.66), (16, 512, 4, 4) 0.92, (64,
 * 96, 13, 13) 0.93; 1 thread 0.96-1.02, same bits. */
static void fn_group_table_fill(fn_group_job *job, char *table, size_t first, size_t last) {
    size_t sample = job->channels * job->spatial, csize = fn_compute_size(job->dtype);
    job->table_w = job->weight ? table : NULL;
    job->table_b = job->bias ? table + sample * csize : NULL;
    size_t c0 = 0, c1 = job->channels; /* the items' channels, unless they wrap a sample */
    if (last - first < job->groups && first % job->groups <= (last - 1) % job->groups) {
        c0 = first % job->groups * job->per_group;
        c1 = ((last - 1) % job->groups + 1) * job->per_group;
    }
    const void *from[2] = {job->weight, job->bias};
    char *to[2] = {(char *)job->table_w, (char *)job->table_b};
    for (int k = 0; k < 2; ++k) {
        if (!from[k]) continue;
        for (size_t c = c0, at = c0 * job->spatial; c < c1; ++c, at += job->spatial) {
            if (csize == 8) {
                double v = ((const double *)from[k])[c], *d = (double *)to[k] + at;
                for (size_t i = 0; i < job->spatial; ++i) d[i] = v;
            } else {
                float v = ((const float *)from[k])[c], *d = (float *)to[k] + at;
                for (size_t i = 0; i < job->spatial; ++i) d[i] = v;
            }
        }
    }
}

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

/* A group's channel rows per rows_affine call: its per-row constants live on the stack. */
#define FN_GROUP_ROWS 64
/* The longest channel rows that go several per call: in-process A/B against a call per
 * row (same bits), float32, time per call, 1 / 2 threads: (16, 64, 7, 7) 8 groups
 * 0.67 / 0.71, (8, 256, 14, 14) 32 groups 0.82 / 0.83, (2, 512, 16, 16) 0.85 / 0.82,
 * (4, 128, 32, 32) 0.99 / 1.00, but (1, 64, 56, 56) 1.03-1.05 / 1.03-1.08. */
#define FN_GROUP_JOINED_MAX 1024

/* Channel rows first ... first + count - 1 (count <= FN_GROUP_ROWS) of group item `item`
 * normalized in one rows_affine call, the same arithmetic as row_normalize per row. */
static void fn_group_affine_rows(const fn_group_job *job, size_t item, size_t first, size_t count,
                                 double shift, double mean_shifted, double rstd) {
    double mean[FN_GROUP_ROWS], mean_lo[FN_GROUP_ROWS], scale[FN_GROUP_ROWS], beta[FN_GROUP_ROWS];
    double params[3][FN_GROUP_ROWS]; /* hi, scale, beta in the compute dtype */
    size_t channel0 = item % job->groups * job->per_group + first;
    for (size_t k = 0; k < count; ++k) {
        mean[k] = shift;
        mean_lo[k] = mean_shifted;
        scale[k] = rstd * fn_param(job->dtype, job->weight, channel0 + k, 1.0);
        beta[k] = fn_param(job->dtype, job->bias, channel0 + k, 0.0);
    }
    fn_affine_params(fn_compute_size(job->dtype), count, mean, mean_lo, scale, beta, params[0],
                     params[1], params[2]);
    size_t offset = (item * job->per_group + first) * job->spatial * job->item_size;
    job->kernels->rows_affine[job->dtype](job->x + offset, count, job->spatial, 0, count,
                                          params[0], params[1], params[2], job->y + offset,
                                          job->stream);
}

/* Channels of fewer than FN_AFFINE_ROW_MIN values, several a group (4x4 maps with 16
 * channels a group, say): a row_normalize call per channel cost more than its work, about
 * 70 cycles a 16-value channel.  The group's span goes in one row_normalize call instead,
 * with fn_group_table_fill's per-position weight and bias.  Only for families that take
 * parameters in natural order (kernels.h, param_block). */
static void fn_group_span_affine(const fn_group_job *job, size_t item, size_t span,
                                 double shift, double mean_shifted, double rstd) {
    size_t offset = item * span * job->item_size;
    size_t at = item % job->groups * span * fn_compute_size(job->dtype);
    job->kernels->row_normalize[job->dtype](
        job->x + offset, NULL, NULL, span, shift, mean_shifted, rstd, 0.0,
        job->table_w ? job->table_w + at : NULL, job->table_b ? job->table_b + at : NULL,
        job->y + offset, NULL, job->stream);
}

/* Statistics of group item (sample, group), then its channels, read from cache.  Channel
 * rows of FN_AFFINE_ROW_MIN to FN_GROUP_JOINED_MAX values go a group's rows per call
 * (rows_affine), where a call per row cost about as much as its loop for 7x7 and 14x14
 * maps. */
static void fn_group_fused(const fn_group_job *job, size_t item) {
    size_t span = job->per_group * job->spatial;
    const char *x = job->x + item * span * job->item_size;
    double shift = fn_element(job->dtype, x, 0), mean_shifted, m2, mean, rstd;
    job->kernels->row_stats[job->dtype](x, NULL, NULL, span, shift, 1, job->prefetch,
                                        &mean_shifted, &m2);
    fn_exact_if_overflowed(job->dtype, x, NULL, 1, span, 0, 1, shift, &mean_shifted, &m2);
    fn_finish(FASTNORM_LAYER_NORM, shift, mean_shifted, m2, (double)span, job->eps, &mean, &rstd);
    if (job->per_group > 1 && job->spatial < FN_AFFINE_ROW_MIN &&
        job->kernels->param_block[job->dtype] == 0 &&
        (job->table_w || job->table_b || (!job->weight && !job->bias))) {
        fn_group_span_affine(job, item, span, shift, mean_shifted, rstd);
        return;
    }
    if (job->per_group > 1 && job->spatial >= FN_AFFINE_ROW_MIN &&
        job->spatial <= FN_GROUP_JOINED_MAX) {
        for (size_t k = 0; k < job->per_group; k += FN_GROUP_ROWS)
            fn_group_affine_rows(job, item, k,
                                 job->per_group - k < FN_GROUP_ROWS ? job->per_group - k : FN_GROUP_ROWS,
                                 shift, mean_shifted, rstd);
        return;
    }
    for (size_t k = 0; k < job->per_group; ++k)
        fn_group_normalize_row(job, item * job->per_group + k, 0, job->spatial, shift, mean_shifted,
                               rstd);
}

/* Groups first ... last - 1 (items: sample * groups + group) as rows of per_group * spatial
 * values with per-position weight and bias (fn_group_table_fill), each group's normalize pass in
 * one loop with the next group's statistics (row_stats_normalize), as LayerNorm's rows go
 * (api_norm.c, fn_norm_rows_ahead).  For groups of several channels of FN_AFFINE_ROW_MIN
 * values or more and at most FN_GROUP_AHEAD_MAX_BYTES, where a group's statistics call,
 * its constants and its rows_affine call (fn_group_fused) cost about as much as its work:
 * PyTorch took 0.65-0.88x fastnorm's time on (256, 96, 13, 13), 3 channels a group.
 * In-process A/B against fn_group_fused, Zen 3, time per call, float32, 1 thread:
 * (256, 96, 13, 13) 0.74, (64, 96, 13, 13) 0.81 (2 threads 0.78-0.81), (32, 128, 8, 8)
 * 0.67, (32, 256, 10, 10) 0.72, (16, 192, 13, 13) 0.85, float16 (64, 96, 13, 13) 0.81,
 * float64 0.97.  Larger groups lost, their tables read beside them: (2, 512, 16, 16) and
 * (4, 128, 32, 32) (16 KB) 1.34-1.42, float64 (8, 256, 14, 14) (12.5 KB) 1.29; (8, 256,
 * 14, 14) float32 (6 KB) 0.99. */
#define FN_GROUP_AHEAD_MAX_BYTES 4096

static void fn_group_rows_ahead(const fn_group_job *job, size_t first, size_t last) {
    const fastnorm_kernels_t *kernels = job->kernels;
    fastnorm_dtype_t dtype = job->dtype;
    size_t span = job->per_group * job->spatial, bytes = span * job->item_size;
    size_t table_bytes = span * fn_compute_size(dtype);
    double shift = 0, mean_shifted = 0, m2 = 0, first_center = NAN; /* kernels.h */
    if (first < last) {
        shift = fn_element(dtype, job->x + first * bytes, 0);
        kernels->row_stats[dtype](job->x + first * bytes, NULL, NULL, span, shift, 1,
                                  job->prefetch, &mean_shifted, &m2);
    }
    for (size_t item = first; item < last; ++item) {
        const char *x = job->x + item * bytes;
        double mean, rstd, group_shift = shift;
        fn_exact_if_overflowed(dtype, x, NULL, 1, span, 0, 1, shift, &mean_shifted, &m2);
        fn_finish(FASTNORM_LAYER_NORM, shift, mean_shifted, m2, (double)span, job->eps, &mean,
                  &rstd);
        double group_mean_shifted = mean_shifted;
        size_t at = item % job->groups * table_bytes;
        const char *w = job->table_w ? job->table_w + at : NULL;
        const char *b = job->table_b ? job->table_b + at : NULL;
        if (item + 1 < last) {
            shift = fn_element(dtype, x + bytes, 0);
            kernels->row_stats_normalize[dtype](x + bytes, span, shift, 1, &mean_shifted, &m2, x,
                                                group_shift, group_mean_shifted, rstd, 0.0, w, b,
                                                job->y + item * bytes, job->stream,
                                                item + 2 < last ? x + 2 * bytes : NULL,
                                                fn_center_handoff(&first_center));
        } else {
            kernels->row_normalize[dtype](x, NULL, NULL, span, group_shift, group_mean_shifted,
                                          rstd, 0.0, w, b, job->y + item * bytes, NULL,
                                          job->stream);
        }
    }
}

/* Groups of at most the family's rows_short_max values (7x7 maps with one or two channels
 * a group, say) take rows_short, a sample's groups per call, each group a row that stays in
 * registers for both passes (with fn_group_table_fill's per-position weight and bias): a
 * row_stats and a row_normalize call per group cost several times the group's work.
 * Samples first ... last - 1. */
static void fn_group_short(const fn_group_job *job, size_t first, size_t last) {
    size_t span = job->per_group * job->spatial, bytes = job->channels * job->spatial * job->item_size;
    for (size_t i = first; i < last; ++i)
        job->kernels->rows_short[job->dtype](job->x + i * bytes, NULL, NULL, job->groups, span, 1,
                                             job->eps, job->table_w, job->table_b, span,
                                             job->y + i * bytes, NULL, NULL);
}

/* Group items first ... last - 1 by fn_group_fused. */
static void fn_group_fused_items(const fn_group_job *job, size_t first, size_t last) {
    for (size_t item = first; item < last; ++item) fn_group_fused(job, item);
}

/* `items` work items shared out among the threads, one contiguous share each, run by
 * `run` with the thread's own tables (`tables`, fn_group_table_bytes apiece, or NULL
 * where none are used) filled for its share; groups_per_item: job->groups where an item
 * is a sample, 1 where it is a group. */
static void fn_group_shares(const fn_group_job *job, size_t items, size_t groups_per_item,
                            char *tables, int threads,
                            void (*run)(const fn_group_job *, size_t, size_t)) {
    size_t table_bytes = fn_group_table_bytes(job);
    FN_PARALLEL_FOR(t, threads, {
        size_t first = items * (size_t)t / (size_t)threads;
        size_t last = items * (size_t)(t + 1) / (size_t)threads;
        fn_group_job own = *job;
        if (tables && first < last)
            fn_group_table_fill(&own, tables + (size_t)t * table_bytes, first * groups_per_item,
                                last * groups_per_item);
        run(&own, first, last);
    });
}

/* Groups of one channel (InstanceNorm) of at most rows_short_channels_max values: BatchNorm's
 * rows_short_channels (AVX2: 16x16 float32 maps 0.77x the time of the paths below, float64
 * 8x16 0.82-0.86x), each channel a row with its own weight and bias, without
 * fn_group_table_fill's per-position copies (which cost as much as the normalization of a 7x7
 * map); each sample's channels in two calls, so that one sample shares the threads too.
 * Zen 5, in-process A/B, 1 thread, time per call, same bits: float32 (1, 512, 7, 7)
 * 0.56, (8, 512, 7, 7) 0.72, (8, 256, 14, 14) 0.67, (4, 64, 4, 4) 0.77, float64 (8, 512,
 * 7, 7) 0.67, bfloat16 0.75; 2 threads (8, 512, 7, 7) 0.60, (1, 1024, 7, 7) 0.29. */
static void fn_instance_short(const fn_group_job *job, size_t n, int threads) {
    size_t bytes = job->spatial * job->item_size, csize = fn_compute_size(job->dtype);
    FN_PARALLEL_FOR(item, 2 * n, {
        size_t i = (size_t)item / 2, half = (size_t)item % 2;
        size_t first = half ? job->channels / 2 : 0;
        size_t rows = half ? job->channels - first : job->channels / 2;
        size_t offset = (i * job->channels + first) * bytes;
        job->kernels->rows_short_channels[job->dtype](
            job->x + offset, rows, job->spatial, job->eps,
            job->weight ? (const char *)job->weight + first * csize : NULL,
            job->bias ? (const char *)job->bias + first * csize : NULL, job->y + offset, NULL,
            NULL);
    });
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

/* The argument checks both entry points make, in the order of the other ops' (dtype,
 * pointers, shape, eps); *total gets n * channels * spatial. */
static fastnorm_status_t fn_group_checks(fastnorm_dtype_t dtype, size_t n, size_t channels,
                                         size_t groups, size_t spatial, const void *x,
                                         const void *y, double eps, size_t *total) {
    int overflow = 0;
    if ((unsigned)dtype >= FASTNORM_DTYPE_COUNT) return FASTNORM_ERR_BAD_DTYPE;
    if (!x || !y) return FASTNORM_ERR_NULL_POINTER;
    *total = fn_product(n, channels, spatial, &overflow);
    if (overflow || *total == 0 || groups == 0 || channels % groups) return FASTNORM_ERR_BAD_SHAPE;
    if (!(eps >= 0) || !isfinite(eps)) return FASTNORM_ERR_BAD_VALUE;
    return FASTNORM_OK;
}

/* The job of a checked call on `threads` threads.  Its output streams from
 * FN_STREAM_MIN_BYTES on one thread, from FN_STREAM_MIN_BYTES_OTHERS on more, as BatchNorm's
 * and the rows' do: in-process A/B, Zen 3, 2 threads, time per call, plain stores over
 * streamed, each order of the builds, same bits: float32 (4, 128, 64, 64) (8 MB) 0.48-0.50,
 * (6, 128, 64, 64) (12 MB) 0.58-0.66, float64 (2, 128, 64, 64) 0.48-0.53; channels-last
 * float64 (2, 128, 64, 64) 0.67-0.87, float32 (4, 128, 64, 64) 0.75-0.79.  On one thread
 * 8 MB outputs gained by plain stores (0.79-0.97) but a 12 MB one lost (1.13-1.16). */
static fn_group_job fn_group_job_of(fastnorm_dtype_t dtype, size_t channels, size_t groups,
                                    size_t spatial, size_t total, const void *x, void *y,
                                    const void *weight, const void *bias, double eps,
                                    int threads) {
    size_t size = fn_storage_size(dtype);
    size_t stream_min = threads > 1 ? FN_STREAM_MIN_BYTES_OTHERS : FN_STREAM_MIN_BYTES;
    fn_group_job job = {fastnorm_active_kernels(), dtype, channels, groups, channels / groups,
                        spatial, size, (const char *)x, (char *)y, weight, bias, eps,
                        fn_stream(x, y, total * size, stream_min),
                        total * size >= FN_COL_PREFETCH_MIN_BYTES, NULL, NULL};
    return job;
}

fastnorm_status_t fastnorm_group_norm(fastnorm_dtype_t dtype, size_t n, size_t channels, size_t groups,
                                      size_t spatial, const void *x, void *y, const void *weight,
                                      const void *bias, double eps, int n_threads) {
    size_t total;
    fastnorm_status_t checked =
        fn_group_checks(dtype, n, channels, groups, spatial, x, y, eps, &total);
    if (checked != FASTNORM_OK) return checked;
    int threads = fn_threads(n_threads, total);
    fn_group_job job = fn_group_job_of(dtype, channels, groups, spatial, total, x, y, weight,
                                       bias, eps, threads);
    size_t items = n * groups, span = job.per_group * spatial;
    if (job.per_group == 1 && spatial <= job.kernels->rows_short_channels_max[dtype]) {
        /* InstanceNorm of small maps */
        fn_instance_short(&job, n, threads);
        return FASTNORM_OK;
    }
    /* small maps: per-position parameters (fn_group_table_fill) where the family takes them */
    int short_span = span <= job.kernels->rows_short_max[dtype];
    int fused = span * job.item_size <= FN_GROUP_FUSED_MAX_BYTES && items >= 4 * (size_t)threads;
    int rows_ahead = job.per_group > 1 && spatial >= FN_AFFINE_ROW_MIN &&
                     span * job.item_size <= FN_GROUP_AHEAD_MAX_BYTES && fused &&
                     job.kernels->param_block[dtype] == 0;
    int small_maps = short_span || rows_ahead ||
                     (job.per_group > 1 && spatial < FN_AFFINE_ROW_MIN &&
                      job.kernels->param_block[dtype] == 0);
    /* the per-position tables: where the paths below take them (small maps, short spans or
     * rows ahead), none too large; tabled also where none are needed (no weight, no bias) */
    int tabled =
        small_maps && channels * spatial * fn_compute_size(dtype) <= FN_GROUP_TABLE_MAX_BYTES;
    char *tables = NULL;
    if (tabled && (short_span || fused) && fn_group_table_bytes(&job)) {
        tables = malloc(fn_group_table_bytes(&job) * (size_t)threads);
        if (!tables) return FASTNORM_ERR_NO_MEMORY;
    }
    fastnorm_status_t status = FASTNORM_OK;
    if (tabled && short_span)
        fn_group_shares(&job, n, groups, tables, threads, fn_group_short);
    else if (!fused)
        status = fn_group_two_pass(&job, n, threads);
    else if (rows_ahead && tabled)
        fn_group_shares(&job, items, 1, tables, threads, fn_group_rows_ahead);
    else
        fn_group_shares(&job, items, 1, tables, threads, fn_group_fused_items);
    free(tables);
    return status;
}

/* ---- fastnorm_group_norm_channels_last ---------------------------------------------- */

/* Sample i's per-channel mean and m2 (column statistics of its (spatial, channels) block,
 * read ahead where the whole input is large: job->prefetch) into mean[i * channels ...] and
 * var[...]; then each group's mean and variance from its channels', whose counts are equal
 * (as fn_group_cl_fused below: Chan's formula channel by channel took two divisions a
 * channel: (1, 2048, 7, 7) float32 0.90x the time, 2 threads 0.86x; Zen 5, in-process
 * A/B), given to every channel of the group. */
static fastnorm_status_t fn_group_stats_cl(const fn_group_job *job, const char *x, double *mean,
                                           double *var, int threads) {
    size_t channels = job->channels, groups = job->groups, spatial = job->spatial;
    fastnorm_status_t status = fn_moments_columns(job->kernels, job->dtype, spatial, channels,
                                                  1, x, mean, var, threads, job->prefetch);
    if (status != FASTNORM_OK) return status;
    size_t per_group = channels / groups;
    for (size_t g = 0; g < groups; ++g) {
        double m = 0, m2 = 0, spread = 0;
        for (size_t c = g * per_group; c < (g + 1) * per_group; ++c) {
            m += mean[c];
            m2 += var[c];
        }
        m /= (double)per_group;
        for (size_t c = g * per_group; c < (g + 1) * per_group; ++c)
            spread += (mean[c] - m) * (mean[c] - m);
        double v = (m2 / (double)spatial + spread) / (double)per_group;
        for (size_t c = g * per_group; c < (g + 1) * per_group; ++c) {
            mean[c] = m;
            var[c] = v < 0 ? 0 : v; /* NaN stays NaN: the whole group's output is NaN */
        }
    }
    return FASTNORM_OK;
}

/* Channels-last samples of at most this many bytes are normalized right after their
 * statistics, one sample a work item, while the sample is still in cache (L2, or past
 * 1 MB, Zen 4's and Zen 5's L2 a core, the L3 that takes L2's evictions).  Up to 2 MB, not
 * 1 MB (Zen 5, against the per-sample calls below
 * reading ahead and streaming as the whole call, time per call): float64 (32, 64, 56, 56)
 * 0.91 (2 threads 0.86), (8, 64, 56, 56) 0.98 (0.87), (4, 64, 56, 56) 0.96-0.97 (0.86),
 * float32 (16, 128, 56, 56) 0.94, (3, 64, 80, 80) 0.93; but an odd few samples on 2
 * threads, one thread taking two: (3, 64, 80, 80) 1.04-1.10, float64 (3, 64, 56, 56)
 * 1.08.  Samples of 4 MB lost 1.45-1.57 on 2 threads.  Earlier (1 MB, Zen 4): against
 * BatchNorm's moments and affine per sample (fn_group_stats_cl above;
 * in-process A/B, time per call, float32, same bits), 1 thread: (8, 256, 2, 2) 0.37-0.52,
 * (8, 512, 4, 4) 0.41-0.55, (32, 64, 7, 7) 0.60-0.91, (8, 256, 14, 14) 0.80-0.83,
 * (4, 256, 28, 28) 0.88, (16, 64, 56, 56) (800 KB samples) 0.90; 2 threads 0.46-0.60 on
 * small maps, 0.55 and 0.71 on the last two.  The setups of the per-sample calls (a malloc,
 * a division per channel, a parameter block) cost more than a small sample's work, and
 * their two passes read a large sample twice. */
#define FN_GROUP_CL_FUSED_MAX_BYTES (2048u << 10)
/* ... and have whole vectors of channels (16 values: a float32 AVX-512 vector) or at least
 * this many: with 3 to 24 channels a row, most lanes of the column kernels' vectors were
 * masked off (1.2-5.3x the time), where BatchNorm's path joins rows into whole vectors. */
#define FN_GROUP_CL_MIN_CHANNELS 32
/* One sample shares its rows among the threads only from this many rows (positions): with
 * fewer, the two passes' per-column work (chunk partials, merges, parameters) outweighed
 * the second thread.  Such a sample takes the fused path instead, its groups in two parts
 * a thread can take each.  Zen 5, in-process A/B, time per call: the fused path on one
 * thread, float32 (1, 2048, 7, 7) 0.77 (2 threads 0.91), (1, 4096, 7, 7) 0.74 (0.92),
 * bfloat16 (1, 2048, 7, 7) 0.86, float64 on 2 threads 1.05; then in two parts, 2 threads,
 * same bits: float32 (1, 2048, 7, 7) 0.54, (1, 4096, 7, 7) 0.49, (1, 1000, 7, 7) 0.74,
 * float64 (1, 2048, 7, 7) 0.50.  At 196 rows the shared passes won: (1, 1024, 14, 14) on
 * 2 threads 1.19 the fused way (one part), (1, 512, 14, 14) 1.12. */
#define FN_GROUP_CL_SHARED_MIN_ROWS 64

/* One thread's scratch for fn_group_cl_fused: four float64 arrays and six of the compute
 * dtype (the parameters, and the same rotated for fn_group_cl_normalize), `channels` values
 * each, every array on a cache line (col_normalize loads its parameters a vector at a time). */
static size_t fn_group_cl_array_bytes(size_t channels, size_t size) {
    return (channels * size + 63) & ~(size_t)63;
}

static size_t fn_group_cl_scratch_bytes(size_t channels, size_t csize) {
    return 4 * fn_group_cl_array_bytes(channels, 8) + 6 * fn_group_cl_array_bytes(channels, csize);
}

/* Group g's channels' parameters for col_normalize, y = (x - hi) * scale + shift, in the
 * compute dtype (T): BatchNorm's column affine (the channel_params kernel and
 * api_internal.h's fn_affine_params) with the group's mean and rstd, the mean folded
 * into the shift where |mean| <= sqrt(var + eps) (decided per group: a loop without
 * branches). */
#define FN_GROUP_CL_PARAMS(T)                                                                  \
    do {                                                                                       \
        T *restrict hi_ = (T *)hi_out, *restrict scale_ = (T *)scale_out;                      \
        T *restrict shift_ = (T *)shift_out;                                                   \
        const T *restrict w_ = (const T *)job->weight, *restrict b_ = (const T *)job->bias;    \
        T hi = fold ? (T)0 : (T)mean;                                                          \
        double low = mean - (double)hi;                                                        \
        for (size_t c = g * per_group; c < (g + 1) * per_group; ++c) {                         \
            double s = rstd * (w_ ? (double)w_[c] : 1.0);                                      \
            hi_[c] = hi;                                                                       \
            scale_[c] = (T)s;                                                                  \
            shift_[c] = (T)((b_ ? (double)b_[c] : 0.0) - low * s);                             \
        }                                                                                      \
    } while (0)

/* acc[c] += x[c] for c < n, x of the storage dtype (loops the compiler vectorizes). */
static void fn_add_row(fastnorm_dtype_t dtype, const void *x, size_t n, double *restrict acc) {
    if (dtype == FASTNORM_F32) {
        const float *restrict v = (const float *)x;
        for (size_t c = 0; c < n; ++c) acc[c] += v[c];
    } else if (dtype == FASTNORM_F64) {
        const double *restrict v = (const double *)x;
        for (size_t c = 0; c < n; ++c) acc[c] += v[c];
    } else {
        for (size_t c = 0; c < n; ++c) acc[c] += fn_element(dtype, x, c);
    }
}

/* The normalize pass of one sample (x, y), its parameters[3] (mean's high part, scale,
 * shift) for col_normalize.  Streamed, the column kernel needs every row on a cache line,
 * but NumPy puts a large array 16 bytes past one: the pass then starts at y's first line
 * boundary, `lead` values into the sample, with the parameters rotated to match (as
 * api_batch_norm.c's fn_affine does), and the first `lead` values and the rest of the last
 * row are calls of their own.  Streamed against plain stores (in-process A/B, float32,
 * NumPy's output 16 bytes past a line, 1 / 2 threads, time per call): (16, 128, 40, 40)
 * 0.70 / 0.67, (32, 64, 56, 56) 0.79 / 0.82. */
static void fn_group_cl_normalize(const fn_group_job *job, const char *x, char *y,
                                  char *params[3], char *rotated[3], int subtract) {
    size_t channels = job->channels, spatial = job->spatial, size = job->item_size;
    size_t csize = fn_compute_size(job->dtype), lead = 0;
    fastnorm_col_normalize_fn normalize = job->kernels->col_normalize[job->dtype];
    if (job->stream && spatial > 1 && (uintptr_t)y % size == 0 && channels * size % 64 == 0)
        lead = (64 - (uintptr_t)y % 64) % 64 / size;
    if (!lead) {
        normalize(x, spatial, channels, channels, subtract ? params[0] : NULL, NULL, params[1],
                  NULL, NULL, params[2], y, job->stream);
        return;
    }
    for (int k = 0; k < 3; ++k) { /* rotated[k][j] = params[k][(j + lead) % channels] */
        memcpy(rotated[k], params[k] + lead * csize, (channels - lead) * csize);
        memcpy(rotated[k] + (channels - lead) * csize, params[k], lead * csize);
    }
    size_t tail = ((spatial - 1) * channels + lead) * size, at = lead * csize;
    normalize(x, 1, lead, channels, subtract ? params[0] : NULL, NULL, params[1], NULL, NULL,
              params[2], y, 0);
    normalize(x + lead * size, spatial - 1, channels, channels, subtract ? rotated[0] : NULL,
              NULL, rotated[1], NULL, NULL, rotated[2], y + lead * size, job->stream);
    normalize(x + tail, 1, channels - lead, channels, subtract ? params[0] + at : NULL, NULL,
              params[1] + at, NULL, NULL, params[2] + at, y + tail, 0);
}

/* Sample i of a channels-last job, its groups g0 to g1 - 1 (all of them, or a part that a
 * thread takes): column statistics of its (spatial, channels) block, each group's mean
 * and variance from its channels' (equal counts: the mean of the means, and the channels'
 * m2 plus spatial times the squared spread of their means), then the sample normalized by
 * the column kernel, from the cache.  The group sums run across the groups
 * (channel k of every group, then k + 1), so that each group's chain of additions overlaps
 * the others': group by group, its latency was most of a 4-position sample's time. */
static void fn_group_cl_fused(const fn_group_job *job, size_t i, size_t g0, size_t g1,
                              char *scratch) {
    size_t channels = job->channels, groups = job->groups, per_group = job->per_group;
    size_t spatial = job->spatial, csize = fn_compute_size(job->dtype);
    size_t c0 = g0 * per_group, cols = (g1 - g0) * per_group, at = c0 * job->item_size;
    size_t stride = fn_group_cl_array_bytes(channels, 8), cstride = fn_group_cl_array_bytes(channels, csize);
    double *ch_mean = (double *)scratch, *ch_m2 = (double *)(scratch + stride);
    double *g_mean = (double *)(scratch + 2 * stride), *g_m2 = (double *)(scratch + 3 * stride);
    char *hi_out = scratch + 4 * stride, *scale_out = hi_out + cstride;
    char *shift_out = scale_out + cstride;
    char *params[3] = {hi_out, scale_out, shift_out};
    char *rotated[3] = {shift_out + cstride, shift_out + 2 * cstride, shift_out + 3 * cstride};
    size_t offset = i * channels * spatial * job->item_size;
    const char *x = job->x + offset;
    job->kernels->col_stats[job->dtype](x + at, spatial, cols, channels, x + at, 1,
                                        job->prefetch, ch_mean + c0, ch_m2 + c0);
    fn_add_row(job->dtype, x + at, cols, ch_mean + c0); /* the shift: row 0 */
    for (size_t g = g0; g < g1; ++g) g_mean[g] = g_m2[g] = 0;
    for (size_t k = 0; k < per_group; ++k)
        for (size_t g = g0; g < g1; ++g) {
            g_mean[g] += ch_mean[g * per_group + k];
            g_m2[g] += ch_m2[g * per_group + k];
        }
    for (size_t g = g0; g < g1; ++g) {
        g_mean[g] /= (double)per_group;
        g_m2[g] /= (double)spatial; /* the channels' m2 over spatial: one spread's worth */
    }
    for (size_t k = 0; k < per_group; ++k)
        for (size_t g = g0; g < g1; ++g) {
            double d = ch_mean[g * per_group + k] - g_mean[g];
            g_m2[g] += d * d;
        }
    for (size_t g = g0; g < g1; ++g) { /* g_m2 becomes sqrt(var + eps) */
        double var = g_m2[g] / (double)per_group;
        if (!isfinite(g_mean[g]) || !isfinite(var)) { /* see fn_exact_moments */
            fn_exact_moments(job->dtype, x + g * per_group * job->item_size, NULL, spatial,
                             per_group, channels, 1, &g_mean[g], &var);
            var /= (double)(spatial * per_group);
        }
        g_m2[g] = sqrt((var < 0 ? 0 : var) + job->eps);
    }
    int subtract = 0;
    for (size_t g = g0; g < g1; ++g) {
        double mean = g_mean[g], root = g_m2[g], rstd = 1.0 / root;
        if (!isfinite(mean) || !isfinite(root)) mean = rstd = NAN; /* the group is NaN */
        int fold = isnan(mean) || fabs(mean) <= root;
        subtract |= !fold;
        if (csize == 8)
            FN_GROUP_CL_PARAMS(double);
        else
            FN_GROUP_CL_PARAMS(float);
    }
    if (g0 == 0 && g1 == groups) {
        fn_group_cl_normalize(job, x, job->y + offset, params, rotated, subtract);
        return;
    }
    /* a part of one sample's groups: under FN_GROUP_CL_FUSED_MAX_BYTES, never streamed */
    job->kernels->col_normalize[job->dtype](
        x + at, spatial, cols, channels, subtract ? params[0] + c0 * csize : NULL, NULL,
        params[1] + c0 * csize, NULL, NULL, params[2] + c0 * csize, job->y + offset + at, 0);
}
#undef FN_GROUP_CL_PARAMS

fastnorm_status_t fastnorm_group_norm_channels_last(fastnorm_dtype_t dtype, size_t n, size_t channels,
                                                    size_t groups, size_t spatial, const void *x,
                                                    void *y, const void *weight, const void *bias,
                                                    double eps, int n_threads) {
    size_t total;
    fastnorm_status_t checked =
        fn_group_checks(dtype, n, channels, groups, spatial, x, y, eps, &total);
    if (checked != FASTNORM_OK) return checked;
    size_t sample = spatial * channels, bytes = sample * fn_storage_size(dtype);
    int whole_vectors = channels >= FN_GROUP_CL_MIN_CHANNELS || channels % 16 == 0;
    int fused = bytes <= FN_GROUP_CL_FUSED_MAX_BYTES && whole_vectors &&
                (n > 1 || total < FN_PARALLEL_MIN_ELEMENTS ||
                 spatial < FN_GROUP_CL_SHARED_MIN_ROWS);
    int threads = fn_threads(n_threads, fused ? total : sample);
    fn_group_job job = fn_group_job_of(dtype, channels, groups, spatial, total, x, y, weight,
                                       bias, eps, threads);
    if (fused) {
        size_t scratch_bytes = fn_group_cl_scratch_bytes(channels, fn_compute_size(dtype));
        void *block;
        char *scratch = fn_malloc_aligned(scratch_bytes * (size_t)threads, &block);
        if (!scratch) return FASTNORM_ERR_NO_MEMORY;
        /* one sample in two parts of its groups, which two threads can share (a group's
         * results do not depend on the parts: the column kernels take each column alone) */
        size_t parts = n == 1 && groups > 1 && total >= FN_PARALLEL_MIN_ELEMENTS ? 2 : 1;
        FN_PARALLEL_FOR(item, n * parts, {
            size_t i = (size_t)item / parts, part = (size_t)item % parts;
            fn_group_cl_fused(&job, i, groups * part / parts, groups * (part + 1) / parts,
                              scratch + (size_t)fn_thread_index() * scratch_bytes);
        });
        free(block);
        return FASTNORM_OK;
    }
    /* Larger samples, one sample of rows worth sharing, or rows of a few channels (which
     * BatchNorm's column path joins into whole vectors): a sample at a time, its rows
     * shared among the threads (work items fixed by the shape: the results do not depend
     * on the thread count).  Per (sample, channel): mean and m2, then its group's mean and
     * variance.
     * Reads ahead and streams as the whole call says (fn_group_job_of), as the fused path
     * does: each sample deciding by its own size read and stored a large call's samples
     * as though they were in cache.  Zen 5, in-process A/B, time per call, same bits:
     * float32 (16, 128, 56, 56) 0.70-0.75 (2 threads 0.73-0.83), (32, 64, 80, 80)
     * 0.82-0.86 (0.85-0.86); float64 (32, 64, 56, 56), which never reads ahead, 0.87-0.90
     * (0.87-0.89); (3, 64, 80, 80), 4.9 MB, neither, 1.00. */
    double *stats = malloc(sizeof(double) * 2 * n * channels);
    if (!stats) return FASTNORM_ERR_NO_MEMORY;
    double *mean = stats, *var = stats + n * channels;
    fastnorm_status_t result = FASTNORM_OK;
    /* every statistic before any output: a failure (no memory) leaves y unwritten */
    for (size_t i = 0; i < n && result == FASTNORM_OK; ++i)
        result = fn_group_stats_cl(&job, (const char *)x + i * bytes, mean + i * channels,
                                   var + i * channels, threads);
    for (size_t i = 0; i < n && result == FASTNORM_OK; ++i)
        result = fn_affine_part(dtype, spatial, channels, 1, (const char *)x + i * bytes,
                                (char *)y + i * bytes, mean + i * channels, var + i * channels,
                                weight, bias, eps, threads, job.stream);
    free(stats);
    return result;
}
