/*
 * api_group_norm.c - fastnorm_group_norm: GroupNorm (and InstanceNorm, one channel a group)
 * over (n, channels, spatial), each (sample, group) span normalized right after its
 * statistics where it fits the L2 cache.
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
