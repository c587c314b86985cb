/*
 * fastnorm.h - the public C API of fastnorm.
 *
 * Nine entry points do all the arithmetic; everything else (shapes, dtypes, layouts,
 * policy) lives in Python.  Every array is C-contiguous and described as a 3-D block
 * (outer, middle, inner):
 *
 *   fastnorm_norm     LayerNorm / RMSNorm: statistics over `middle` for every
 *                     (outer, inner) position.  inner == 1 is the row-wise case.
 *   fastnorm_moments  per-channel Welford partials (count, mean, m2) over `outer` and
 *                     `inner`, for every one of the `middle` channels (BatchNorm
 *                     training, GroupNorm with one "channel" per (sample, group)).
 *   fastnorm_affine   y = (x - mean[c]) * weight[c] / sqrt(var[c] + eps) + bias[c] for
 *                     every channel c of `middle` (BatchNorm eval).
 *   fastnorm_batch_norm_train  per-channel batch statistics, then fastnorm_affine's y
 *                     (BatchNorm training), in one pass where a channel fits the cache.
 *   fastnorm_group_norm  GroupNorm / InstanceNorm of (n, channels, spatial), statistics
 *                     and normalization of each group in one pass where it fits the cache.
 *   fastnorm_group_norm_channels_last  the same of (n, spatial, channels) data (a
 *                     channels-last NHWC array): column statistics, then a column affine.
 *   fastnorm_update_running  BatchNorm's running statistics after a training step.
 *   fastnorm_norm_backward, fastnorm_batch_norm_backward  the gradients of LayerNorm /
 *                     RMSNorm and of BatchNorm training.
 *
 * One more entry point moves data without arithmetic: fastnorm_copy_strided, the copy
 * of a transposed input (a Fortran-order array, a channels-last view) to C order, and of
 * a result back into such an out=.
 *
 * Numerics: data of float32/float16/bfloat16 are computed in float32 lanes with block
 * results merged in float64; float64 data in float64 lanes.  Means are subtracted as an
 * exact high/low pair, so rows like 1e5 + N(0, 1) keep full float32 accuracy.
 *
 * Conventions: entry points validate every argument before writing anything and return
 * a fastnorm_status_t.  n_threads <= 0 means "OpenMP's default" (omp_get_max_threads()).
 * Results are bitwise identical for any n_threads: work is split into chunks fixed by
 * the problem size and partial statistics are merged in index order.
 */
#ifndef FASTNORM_FASTNORM_H
#define FASTNORM_FASTNORM_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(_WIN32)
#define FASTNORM_API
#else
#define FASTNORM_API __attribute__((visibility("default")))
#endif

typedef enum {
    FASTNORM_OK = 0,
    FASTNORM_ERR_NULL_POINTER = -1,
    FASTNORM_ERR_BAD_SHAPE = -2,
    FASTNORM_ERR_BAD_STRIDE = -3,
    FASTNORM_ERR_BAD_DTYPE = -4,
    FASTNORM_ERR_NO_MEMORY = -5,
    FASTNORM_ERR_ISA_UNAVAILABLE = -6,
    FASTNORM_ERR_BAD_VALUE = -7
} fastnorm_status_t;

/* Storage dtype of x / y / residual.  The compute dtype is float64 for FASTNORM_F64
 * and float32 for the three others; weight, bias and returned statistics of
 * fastnorm_norm are in the compute dtype. */
typedef enum {
    FASTNORM_F32 = 0,
    FASTNORM_F64 = 1,
    FASTNORM_F16 = 2,
    FASTNORM_BF16 = 3
} fastnorm_dtype_t;
#define FASTNORM_DTYPE_COUNT 4

typedef enum {
    FASTNORM_ISA_SCALAR = 0,
    FASTNORM_ISA_AVX2 = 1,
    FASTNORM_ISA_AVX512 = 2
} fastnorm_isa_t;
#define FASTNORM_ISA_COUNT 3

typedef enum {
    FASTNORM_LAYER_NORM = 0, /* y = (h - mean) * rstd * w + b,  rstd = 1/sqrt(var + eps) */
    FASTNORM_RMS_NORM = 1    /* y = h * rstd * w,               rstd = 1/sqrt(mean(h^2) + eps) */
} fastnorm_norm_kind_t;

/* LayerNorm / RMSNorm of x viewed as (outer, middle, inner), statistics over `middle`.
 *
 * x, y:          outer*middle*inner elements of `dtype`.  y may equal x (in place).
 * residual:      NULL, or like x: the function normalizes h = x + residual rounded to
 *                `dtype`.  Only inner == 1 supports it.
 * residual_out:  NULL, or like x: receives h (requires residual).  May equal x or
 *                residual, never y.
 * weight, bias:  NULL or `middle` elements of the compute dtype (bias ignored for RMS).
 * mean_out:      NULL or outer*inner elements of the compute dtype (LayerNorm only).
 * rstd_out:      NULL or outer*inner elements of the compute dtype.
 */
FASTNORM_API fastnorm_status_t fastnorm_norm(
    fastnorm_norm_kind_t kind, fastnorm_dtype_t dtype,
    size_t outer, size_t middle, size_t inner,
    const void *x, const void *residual, void *residual_out, void *y,
    const void *weight, const void *bias, double eps,
    void *mean_out, void *rstd_out, int n_threads);

/* Per-channel Welford partials of x viewed as (outer, channels, inner): for every
 * channel c, mean_out[c] and m2_out[c] (sum of squared deviations) over the
 * outer*inner values of that channel, in float64.  The count is outer*inner. */
FASTNORM_API fastnorm_status_t fastnorm_moments(
    fastnorm_dtype_t dtype, size_t outer, size_t channels, size_t inner,
    const void *x, double *mean_out, double *m2_out, int n_threads);

/* BatchNorm's normalization of x viewed as (outer, channels, inner):
 *   y = (x - mean[c]) * weight[c] / sqrt(var[c] + eps) + bias[c].
 * mean, var: `channels` float64 values (mean may be NULL for 0).  weight, bias: NULL or
 * `channels` values of the compute dtype.  The per-channel factors are folded in float64
 * (IEEE arithmetic decides a negative var); the mean is subtracted as a high/low pair in
 * the compute dtype, so large offsets cancel exactly.  y may equal x. */
FASTNORM_API fastnorm_status_t fastnorm_affine(
    fastnorm_dtype_t dtype, size_t outer, size_t channels, size_t inner,
    const void *x, void *y, const double *mean, const double *var,
    const void *weight, const void *bias, double eps, int n_threads);

/* BatchNorm training of x viewed as (outer, channels, inner): each channel's batch mean and
 * population variance over its outer*inner values (float64, into mean_out / var_out, each
 * `channels` values; var NaN when the values are not all finite), then fastnorm_affine's
 * y with them.  With one sample (outer == 1), a channel small enough for the L2 cache is
 * normalized right after its statistics (one pass over memory).  weight, bias: NULL or
 * `channels` values of the compute dtype.  y may equal x. */
FASTNORM_API fastnorm_status_t fastnorm_batch_norm_train(
    fastnorm_dtype_t dtype, size_t outer, size_t channels, size_t inner,
    const void *x, void *y, const void *weight, const void *bias, double eps,
    double *mean_out, double *var_out, int n_threads);

/* PyTorch's running-statistics update after a BatchNorm training step over `count` values
 * per channel, in place for c < channels:
 *   running_mean[c] = (1 - momentum) * running_mean[c] + momentum * mean[c]
 *   running_var[c]  = (1 - momentum) * running_var[c] + momentum * var[c] * count / (count - 1)
 * running_mean, running_var: `channels` values of running_dtype (FASTNORM_F32 or
 * FASTNORM_F64), updated in place.  The (1 - momentum) products are rounded to
 * running_dtype and the sums taken in float64, then rounded once: NumPy's result for the
 * formula above with float64 mean/var.  count >= 2, momentum in [0, 1]. */
FASTNORM_API fastnorm_status_t fastnorm_update_running(
    fastnorm_dtype_t running_dtype, size_t channels, size_t count, double momentum,
    const double *mean, const double *var, void *running_mean, void *running_var);

/* GroupNorm of x viewed as (n, channels, spatial): statistics over each (sample, group of
 * channels / groups channels) span, then y = (x - mean) * rstd * weight[c] + bias[c].
 * weight, bias: NULL or `channels` elements of the compute dtype.  A group small enough
 * for the L2 cache is normalized right after its statistics (one pass over memory).
 * y may equal x.  channels % groups must be 0. */
FASTNORM_API fastnorm_status_t fastnorm_group_norm(
    fastnorm_dtype_t dtype, size_t n, size_t channels, size_t groups, size_t spatial,
    const void *x, void *y, const void *weight, const void *bias, double eps, int n_threads);

/* fastnorm_group_norm of x stored as (n, spatial, channels), channel fastest (NHWC): each
 * sample's per-channel statistics (fastnorm_moments' column path) merged per group, then
 * fastnorm_affine with every channel given its group's mean and variance.  Two passes over
 * memory.  Results equal fastnorm_group_norm's on the transposed data within rounding.
 * y may equal x. */
FASTNORM_API fastnorm_status_t fastnorm_group_norm_channels_last(
    fastnorm_dtype_t dtype, size_t n, size_t channels, size_t groups, size_t spatial,
    const void *x, void *y, const void *weight, const void *bias, double eps, int n_threads);

/* Backward of fastnorm_norm: grad_y and x viewed as (outer, middle, inner) of `dtype`,
 * normalized over `middle` at every (outer, inner) position; mean (LayerNorm only; NULL
 * for RMSNorm) and rstd the forward pass's outer * inner statistics in the compute dtype,
 * weight NULL or `middle` compute-dtype values.  With xhat = (x - mean) * rstd (RMSNorm:
 * x * rstd) and gw = grad_y * weight, each position's
 *   grad_x = rstd * ((gw - mean(gw)) - xhat * mean(gw * xhat))    (RMSNorm: no mean(gw))
 * is written to grad_x (like x; it may be grad_y or x), and over the positions
 * grad_bias[j] = sum(grad_y[.., j, ..]) and grad_weight[j] = sum((grad_y * xhat)[.., j, ..])
 * in float64 (each NULL or `middle` values; grad_weight needs a weight).  Sums are taken
 * in the compute dtype a few values at a time, then in float64. */
FASTNORM_API fastnorm_status_t fastnorm_norm_backward(
    fastnorm_norm_kind_t kind, fastnorm_dtype_t dtype, size_t outer, size_t middle,
    size_t inner, const void *grad_y, const void *x, const void *mean, const void *rstd,
    const void *weight, void *grad_x, double *grad_weight, double *grad_bias, int n_threads);

/* Training-mode backward of BatchNorm of x viewed as (outer, channels, inner): mean and rstd
 * the `channels` batch statistics in the compute dtype, weight NULL or `channels`
 * compute-dtype values; with n = outer * inner values a channel,
 *   grad_x = rstd * ((gw - mean(gw)) - xhat * mean(gw * xhat))
 * over each channel's values, and grad_bias[c] = sum(grad_y), grad_weight[c] =
 * sum(grad_y * xhat) over the channel, in float64 (each NULL or `channels` values).
 * grad_x may be grad_y or x. */
FASTNORM_API fastnorm_status_t fastnorm_batch_norm_backward(
    fastnorm_dtype_t dtype, size_t outer, size_t channels, size_t inner,
    const void *grad_y, const void *x, const void *mean, const void *rstd,
    const void *weight, void *grad_x, double *grad_weight, double *grad_bias, int n_threads);

/* A copy between two layouts of one shape: the item at
 * dst + i_0 * dst_strides[0] + ... + i_{ndim-1} * dst_strides[ndim-1] gets the one at
 * src + i_0 * src_strides[0] + ... (strides in bytes, any sign; 0 in src broadcasts).
 * Made for a transpose, such as a Fortran-order array or the (N, C, H, W) view of NHWC
 * memory to or from C order: the items move in tiles of the plane of dst's and src's
 * axes of smallest stride, a cache line long each way, so that both arrays are read and
 * written a line at a time (NumPy's item loop takes 4-5 times as long on a Fortran-order
 * 4096x768 float32 array).  Past the caches (from 8 MB, or a sixteenth of the last-level
 * cache where that is more) the tiles of 4- and 8-byte items write dst's whole lines with
 * streaming stores, fenced before the call returns (NumPy's loop takes 12-20 times as
 * long on an 8192x4096 one).  Any other layout is copied too, item by item.  Copies of
 * 32768 items or more run on n_threads threads, in shares of whole tiles.
 * item_size 2, 4 or 8 (the bits are copied, whatever the dtype); 1 <= ndim <=
 * FASTNORM_MAX_DIMS; dst writes each item once (FASTNORM_ERR_BAD_STRIDE for a 0 stride
 * on an axis longer than 1) and does not overlap src. */
#define FASTNORM_MAX_DIMS 64
FASTNORM_API fastnorm_status_t fastnorm_copy_strided(size_t item_size, size_t ndim,
                                                     const size_t *shape, const void *src,
                                                     const ptrdiff_t *src_strides, void *dst,
                                                     const ptrdiff_t *dst_strides,
                                                     int n_threads);

/* Kernel family selection.  fastnorm_set_isa fails with FASTNORM_ERR_ISA_UNAVAILABLE
 * when the family was not compiled in or the CPU lacks it. */
FASTNORM_API int fastnorm_isa_compiled(fastnorm_isa_t isa);
FASTNORM_API int fastnorm_isa_supported(fastnorm_isa_t isa); /* compiled and the CPU has it */
FASTNORM_API fastnorm_isa_t fastnorm_best_isa(void);
FASTNORM_API fastnorm_isa_t fastnorm_get_isa(void);
FASTNORM_API fastnorm_status_t fastnorm_set_isa(fastnorm_isa_t isa);
FASTNORM_API const char *fastnorm_isa_name(fastnorm_isa_t isa);

/* The AVX-512 family converts bfloat16 with AVX512-BF16 instructions where this build
 * compiled them and the CPU has them (the default there), else with exact integer
 * arithmetic; both give the same bits.  fastnorm_set_avx512_bf16(0) keeps it to the
 * integer arithmetic (tests run both); (1) fails with FASTNORM_ERR_ISA_UNAVAILABLE where
 * unsupported.  _enabled: supported and not turned off. */
FASTNORM_API int fastnorm_avx512_bf16_supported(void);
FASTNORM_API int fastnorm_avx512_bf16_enabled(void);
FASTNORM_API fastnorm_status_t fastnorm_set_avx512_bf16(int enabled);

/* Threads: 1 when built without OpenMP.  fastnorm_thread_limit: the most threads a call
 * uses; 1 without OpenMP, and 1 in a process forked after fastnorm ran a team of threads
 * (GNU OpenMP cannot start threads there: its first parallel region would wait forever
 * for the parent's workers, which a fork does not copy); else FASTNORM_MAX_TEAM (a larger
 * request made GNU OpenMP crash). */
#define FASTNORM_MAX_TEAM 1024
FASTNORM_API int fastnorm_openmp_enabled(void);
FASTNORM_API int fastnorm_default_threads(void);
FASTNORM_API int fastnorm_thread_limit(void);

FASTNORM_API const char *fastnorm_status_string(fastnorm_status_t status);

#ifdef __cplusplus
}
#endif
#endif /* FASTNORM_FASTNORM_H */
