# Declarations of include/fastnorm/fastnorm.h, one to one.  Nothing else belongs here.

cdef extern from "fastnorm/fastnorm.h" nogil:
    ctypedef enum fastnorm_status_t:
        FASTNORM_OK
        FASTNORM_ERR_NULL_POINTER
        FASTNORM_ERR_BAD_SHAPE
        FASTNORM_ERR_BAD_STRIDE
        FASTNORM_ERR_BAD_DTYPE
        FASTNORM_ERR_NO_MEMORY
        FASTNORM_ERR_ISA_UNAVAILABLE
        FASTNORM_ERR_BAD_VALUE

    ctypedef enum fastnorm_dtype_t:
        FASTNORM_F32
        FASTNORM_F64
        FASTNORM_F16
        FASTNORM_BF16
    enum: FASTNORM_DTYPE_COUNT

    ctypedef enum fastnorm_isa_t:
        FASTNORM_ISA_SCALAR
        FASTNORM_ISA_AVX2
        FASTNORM_ISA_AVX512
    enum: FASTNORM_ISA_COUNT

    ctypedef enum fastnorm_norm_kind_t:
        FASTNORM_LAYER_NORM
        FASTNORM_RMS_NORM

    fastnorm_status_t fastnorm_norm(
        fastnorm_norm_kind_t kind, fastnorm_dtype_t dtype,
        size_t outer, size_t middle, size_t inner,
        const void *x, const void *residual, void *residual_out, void *y,
        const void *weight, const void *bias, double eps,
        void *mean_out, void *rstd_out, int n_threads)

    fastnorm_status_t fastnorm_moments(
        fastnorm_dtype_t dtype, size_t outer, size_t channels, size_t inner,
        const void *x, double *mean_out, double *m2_out, int n_threads)

    fastnorm_status_t fastnorm_affine(
        fastnorm_dtype_t dtype, size_t outer, size_t channels, size_t inner,
        const void *x, void *y, const double *mean, const double *var,
        const void *weight, const void *bias, double eps, int n_threads)

    fastnorm_status_t fastnorm_batch_norm_train(
        fastnorm_dtype_t dtype, size_t outer, size_t channels, size_t inner,
        const void *x, void *y, const void *weight, const void *bias, double eps,
        double *mean_out, double *var_out, int n_threads)

    fastnorm_status_t fastnorm_update_running(
        fastnorm_dtype_t running_dtype, size_t channels, size_t count, double momentum,
        const double *mean, const double *var, void *running_mean, void *running_var)

    fastnorm_status_t fastnorm_group_norm(
        fastnorm_dtype_t dtype, size_t n, size_t channels, size_t groups, size_t spatial,
        const void *x, void *y, const void *weight, const void *bias, double eps,
        int n_threads)

    fastnorm_status_t fastnorm_group_norm_channels_last(
        fastnorm_dtype_t dtype, size_t n, size_t channels, size_t groups, size_t spatial,
        const void *x, void *y, const void *weight, const void *bias, double eps,
        int n_threads)

    fastnorm_status_t fastnorm_norm_backward(
        fastnorm_norm_kind_t kind, fastnorm_dtype_t dtype, size_t outer, size_t middle,
        size_t inner, const void *grad_y, const void *x, const void *mean, const void *rstd,
        const void *weight, void *grad_x, double *grad_weight, double *grad_bias,
        int n_threads)

    fastnorm_status_t fastnorm_batch_norm_backward(
        fastnorm_dtype_t dtype, size_t outer, size_t channels, size_t inner,
        const void *grad_y, const void *x, const void *mean, const void *rstd,
        const void *weight, void *grad_x, double *grad_weight, double *grad_bias,
        int n_threads)

    enum: FASTNORM_MAX_DIMS
    fastnorm_status_t fastnorm_copy_strided(
        size_t item_size, size_t ndim, const size_t *shape, const void *src,
        const ptrdiff_t *src_strides, void *dst, const ptrdiff_t *dst_strides,
        int n_threads)

    int fastnorm_isa_compiled(fastnorm_isa_t isa)
    int fastnorm_isa_supported(fastnorm_isa_t isa)
    fastnorm_isa_t fastnorm_best_isa()
    fastnorm_isa_t fastnorm_get_isa()
    fastnorm_status_t fastnorm_set_isa(fastnorm_isa_t isa)
    const char *fastnorm_isa_name(fastnorm_isa_t isa)
    int fastnorm_avx512_bf16_supported()
    int fastnorm_avx512_bf16_enabled()
    fastnorm_status_t fastnorm_set_avx512_bf16(int enabled)

    int fastnorm_openmp_enabled()
    int fastnorm_default_threads()
    int fastnorm_thread_limit()

    const char *fastnorm_status_string(fastnorm_status_t status)


# The library's private side, for the tests: the output size from which layout copies and
# rows without a residual stream (8 MiB, or a sixteenth of the last-level cache; rows on
# several threads at least 16 MiB).
cdef extern from "api_internal.h" nogil:
    size_t fn_llc_stream_min_bytes()
    size_t fn_row_stream_min_bytes(int threads)

# The tuning for the kind of core (kernels.h): AMD's, or the default (measured on Intel's).
cdef extern from "kernels.h" nogil:
    ctypedef enum fastnorm_tuning_t:
        FASTNORM_TUNING_DEFAULT
        FASTNORM_TUNING_AMD
        FASTNORM_TUNING_COUNT
    fastnorm_tuning_t fastnorm_tuning()
    fastnorm_status_t fastnorm_set_tuning(fastnorm_tuning_t tuning)
