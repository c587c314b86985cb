/*
 * kernel_channels.h - channel_params: BatchNorm's per-channel constants, in each family's
 * translation unit (included once by kernel_family.h), so that its plain C loops vectorize
 * with the family's flags.  A channel is computed alone, with IEEE operations that round
 * the same at every vector width (no contraction under -std=c11), so every family gives
 * the same bits.  In the baseline api_batch_norm.c, where this ran before, the square
 * roots and divisions took two a vector: (1, 2048, 7, 7) float32 eval spent about a
 * quarter of its time on them (perf).  In-process A/B against that, Zen 5, AVX-512, 1
 * thread, time per call: BatchNorm eval float32 (1, 2048, 7, 7) 0.72, float64 0.88,
 * (2, 1024) 0.55, channels-last (49, 2048) 0.76; training channels-last (49, 2048) 0.88;
 * (1, 64, 56, 56) and (8, 256, 14, 14) level (0.99).
 */

#include <float.h>
#include <math.h>

/* The parameter array p (NULL: `absent` everywhere; float64 or float32 values) in out. */
static void KB_GLUE(kb, channel, KB_ISA)(size_t channels, const void *p, int p_f64, double absent,
                                         double *restrict out) {
    if (!p)
        for (size_t c = 0; c < channels; ++c) out[c] = absent;
    else if (p_f64)
        for (size_t c = 0; c < channels; ++c) out[c] = ((const double *)p)[c];
    else
        for (size_t c = 0; c < channels; ++c) out[c] = (double)((const float *)p)[c];
}

static int KB_GLUE(channel, params, KB_ISA)(size_t channels, const double *restrict mean,
                                            const double *restrict var, const void *weight,
                                            const void *bias, int params_f64, double eps,
                                            double *restrict scale, double *restrict shift,
                                            double *restrict centre) {
    KB_GLUE(kb, channel, KB_ISA)(channels, weight, params_f64, 1.0, scale);
    KB_GLUE(kb, channel, KB_ISA)(channels, bias, params_f64, 0.0, shift);
    for (size_t c = 0; c < channels; ++c) {
        centre[c] = sqrt(var[c] + eps);
        scale[c] = scale[c] / centre[c];
    }
    if (!mean) return 0;
    int all = 1;
    for (size_t c = 0; c < channels; ++c) {
        double m = mean[c], s = scale[c], ms = m * s;
        int fold = (m != m) | (s != s) | ((fabs(m) <= centre[c]) & (fabs(ms) <= DBL_MAX));
        shift[c] = fold ? shift[c] - ms : shift[c];
        centre[c] = fold ? 0.0 : m;
        all &= fold;
    }
    return all;
}
