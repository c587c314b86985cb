/*
 * kernel_row_normalize.h - part of kernel_body.h (which includes it once per dtype, after
 * kernel_row_stats.h): row_normalize, rows_affine, and row_stats_normalize, the normalize
 * pass of one row in one loop with the next row's statistics.
 */

/* Plain stores ask for each line of y this many bytes ahead, as the channels-last pass does
 * (kernel_columns.h, KB_COL_STORE_AHEAD): in cache each store waited for its line.  The
 * hint is a read prefetch (prefetcht0): a line that no other core holds arrives exclusive,
 * and the store finds it writable.  The families are built without -mprfchw (Haswell has
 * no PREFETCHW); a build with it, whose hints became prefetchw, was level (fifty-ninth
 * session, in-process A/B, both orders, 21 samples: BatchNorm eval and training (1, 64,
 * 56, 56), channels-last eval (3136, 64), LayerNorm 4096x256 and 512x768, RMSNorm 64x768
 * all within 0.99-1.01 over the two orders).  Streamed stores take no line into the cache
 * and ask for none.  AVX-512 Xeon (fifty-eighth session), in-process A/B, both orders of
 * the builds, time per call: NCHW BatchNorm's joined affine (41 samples) eval float32 (1,
 * 64, 56, 56) 0.91 / 0.97 (2 threads 0.96 / 0.95), GroupNorm (1, 64, 56, 56) 0.93 / 1.00;
 * (8, 256, 14, 14), (2, 64, 56, 56), float64, bfloat16 and streamed (64, 3, 224, 224)
 * level (the forty-fifth session's try lost 1.04-1.05 on 2 threads).  Then the row passes
 * (31 samples): RMSNorm float32 64x768 0.91 / 0.90, 512x768 0.98 / 0.97 (2 threads 0.91 /
 * 0.91), LayerNorm 512x768 0.98 / 0.96, 4096x768 0.98 / 0.95, float16 0.98 / 0.97, NCHW
 * BatchNorm training (1, 64, 56, 56) 0.95 / 0.98; LayerNorm 64x768, 128x384, 128x4096,
 * bfloat16, float64, the residual form and streamed shapes level.  Not on AMD's cores (the
 * AMD tuning, dispatch.c): on Zen 4, whose core loads one 512-bit vector a cycle, each hint
 * took a load's slot.  Sixty-fifth session, in-process A/B, time per call, without the
 * hints over with them, each order of the builds where two figures, 21 samples: NCHW
 * BatchNorm eval (1, 64, 56, 56) 0.87 / 0.90, (8, 256, 14, 14) 0.86, training (8, 256, 14,
 * 14) 0.97, (32, 64, 56, 56) 1.01 / 1.01; LayerNorm 512x768 on 2 threads 0.99 / 0.89,
 * 4096x768 0.98 / 1.02; RMSNorm 64x768 0.97, 4096x768 1.005 / 0.97, 2048x768 1.02 / 0.97;
 * LayerNorm 64x768, 512x768 and 128x4096 0.99-1.00. */
#define KB_STORE_AHEAD 1024
/* Ask for the lines of y's first `count` elements KB_STORE_AHEAD bytes on, to write them,
 * where the tuning asks for store hints (dispatch.c, fastnorm_store_hints). */
KB_INLINE void KB_NAME(kb_prefetch_store)(const KB_T *y, size_t count) {
    if (!fastnorm_store_hints) return;
    for (size_t line = 0; line < count * sizeof(KB_T); line += 64)
        __builtin_prefetch((const char *)y + KB_STORE_AHEAD + line, 0, 3);
}

/* ---- row normalize --------------------------------------------------------------- */

/* Elements before y's first address aligned for a streaming store (all of them when y is
 * not even element-aligned, so nothing is streamed). */
KB_INLINE size_t KB_NAME(kb_stream_head)(const KB_T *y, size_t n) {
    const uintptr_t address = (uintptr_t)y, bytes = KB_LANES * sizeof(KB_T);
    size_t head = address % sizeof(KB_T) ? n : (size_t)((bytes - address % bytes) % bytes) / sizeof(KB_T);
    return head < n ? head : n;
}

/* Prefetch the cache lines of elements i ... i + count - 1 of a span, each line once as i
 * steps by count: every 64 bytes of a step of 64 or more, else from the step that starts
 * in a line's first `step` bytes.  With the low-locality hint (prefetcht2): the span is
 * read by the caller's next pass, not this one, and need not displace this pass's data
 * from L1 (api_norm.c's long rows on 1 thread, 16x1048576, time against no prefetch: RMSNorm
 * 0.83-0.97x with prefetcht2, 0.94-0.99x with prefetcht0; LayerNorm 0.98-1.02x against
 * 1.06-1.10x).  Not in the scalar family: its one-lane loops rely on the compiler's
 * auto-vectorization, which a per-element prefetch defeats (measured 1.6x slower). */
KB_INLINE void KB_NAME(kb_prefetch_lines)(const char *span, size_t i, size_t count) {
    size_t byte = i * sizeof(KB_T), step = count * sizeof(KB_T);
    if (KB_LANES == 1) return;
    if (step >= 64)
        for (size_t offset = 0; offset < step; offset += 64)
            __builtin_prefetch(span + byte + offset, 0, 1);
    else if (byte % 64 < step)
        __builtin_prefetch(span + byte, 0, 1);
}

/* The normalize pass's constants as vectors: y = ((h - mean_hi) * scale + low) * w + b,
 * where low = -mean_lo * scale folds the low part of the mean into the FMA (one operation
 * fewer than subtracting it, and one rounding fewer); without weight and bias, `beta`
 * already holds beta + low. */
KB_INLINE void KB_NAME(kb_normalize_constants)(KB_C mean_hi, KB_C mean_lo, KB_C scale, KB_C beta,
                                               int center, int has_affine, KB_V *mean_hi_v,
                                               KB_V *low_v, KB_V *scale_v, KB_V *beta_v) {
    KB_C low = center ? (KB_C)(-(double)mean_lo * (double)scale) : 0;
    *mean_hi_v = kb_set1(mean_hi);
    *low_v = kb_set1(low);
    *scale_v = kb_set1(scale);
    *beta_v = kb_set1(has_affine ? beta : beta + low);
}

/* The normalize pass on h, the vector at element i (kb_normalize_constants); `left` <
 * KB_LANES selects a masked tail of the parameters. */
KB_INLINE KB_V KB_NAME(kb_normalize_h)(KB_V h, size_t i, size_t left, KB_V mean_hi, KB_V low,
                                       KB_V scale, KB_V beta, const KB_C *weight,
                                       const KB_C *bias, int center, int has_weight,
                                       int has_bias) {
    int full = left >= KB_LANES;
    if (center) h = kb_sub(h, mean_hi);
    KB_V add = has_bias ? (full ? kb_param(bias + i) : kb_param_n(bias + i, left)) : beta;
    if (has_weight)
        return kb_fma(center ? kb_fma(h, scale, low) : kb_mul(h, scale),
                      full ? kb_param(weight + i) : kb_param_n(weight + i, left), add);
    return kb_fma(h, scale, has_bias ? kb_add(add, low) : add);
}

/* One vector of the normalize pass at element i; `left` < KB_LANES selects a masked tail.
 * h_out: NULL, or where h goes (for residual_out). */
KB_INLINE KB_V KB_NAME(kb_row_normalize_value)(const KB_T *x, const KB_T *residual, size_t i,
                                               size_t left, KB_V mean_hi, KB_V low, KB_V scale,
                                               KB_V beta, const KB_C *weight, const KB_C *bias,
                                               int has_residual, int center, int has_weight,
                                               int has_bias, KB_V *h_out) {
    int full = left >= KB_LANES;
    KB_V h = full ? kb_load(x + i) : kb_load_n(x + i, left);
    if (has_residual)
        h = kb_round(kb_add(h, full ? kb_load(residual + i) : kb_load_n(residual + i, left)));
    if (h_out) *h_out = h;
    return KB_NAME(kb_normalize_h)(h, i, left, mean_hi, low, scale, beta, weight, bias, center,
                                   has_weight, has_bias);
}

/* The pair of vectors at element i (kb_load2's order; the parameters' pair at i is in the
 * same order). */
KB_INLINE void KB_NAME(kb_row_normalize_pair)(const KB_T *x, const KB_T *residual, size_t i,
                                              KB_V mean_hi, KB_V low, KB_V scale, KB_V beta,
                                              const KB_C *weight, const KB_C *bias,
                                              int has_residual, int center, int has_weight,
                                              int has_bias, KB_V *first, KB_V *second,
                                              KB_V *h_first, KB_V *h_second) {
    KB_V h0, h1;
    kb_load2(x + i, &h0, &h1);
    if (has_residual) {
        KB_V r0, r1;
        kb_load2(residual + i, &r0, &r1);
        h0 = kb_round(kb_add(h0, r0));
        h1 = kb_round(kb_add(h1, r1));
        *h_first = h0;
        *h_second = h1;
    }
    *first = KB_NAME(kb_normalize_h)(h0, i, KB_LANES, mean_hi, low, scale, beta, weight, bias,
                                     center, has_weight, has_bias);
    *second = KB_NAME(kb_normalize_h)(h1, i + KB_LANES, KB_LANES, mean_hi, low, scale, beta,
                                      weight, bias, center, has_weight, has_bias);
}

/* The first `left` (< KB_LANES) elements of v streamed to y (kb_stream_bytes: 16-byte
 * pieces, and 4-byte ones up to and after them): a row's partial first or last vector, so
 * that a line shared with the neighbouring row gets streaming stores only, never a plain
 * store that flushes the line's write-combining buffer early and reads it (LayerNorm
 * 32768x768 float32 on NumPy arrays, 16 bytes past a line, took 1.15x the time before).
 * A remainder under 4 bytes (a half-precision element) is stored plainly.  The vector
 * goes to the stack whole: the 16-byte loads that follow cannot take their data from a
 * masked store and waited for it to retire (perf, bfloat16 LayerNorm 32768x768: this
 * function 7% of the samples, 2.9% after).  Out of line: it runs at most twice a row, and
 * every kernel variant would otherwise carry a copy. */
static __attribute__((noinline)) void KB_NAME(kb_stream_part)(KB_T *y, KB_V v, size_t left) {
    _Alignas(64) KB_T part[KB_LANES];
    kb_store(part, v);
    size_t bytes = left * sizeof(KB_T), streamed = kb_stream_bytes(y, part, bytes);
    if (bytes > streamed) /* a call of memcpy costs a VZEROUPPER too */
        memcpy((char *)y + streamed, (const char *)part + streamed, bytes - streamed);
}

/* v to p, or its first `left` (< KB_LANES) elements: streamed (stream) or stored. */
KB_INLINE void KB_NAME(kb_put)(KB_T *p, KB_V v, size_t left, int stream) {
    if (left >= KB_LANES && stream)
        kb_stream(p, v);
    else if (left >= KB_LANES)
        kb_store(p, v);
    else if (stream)
        KB_NAME(kb_stream_part)(p, v, left);
    else
        kb_store_n(p, v, left);
}

/* One vector of the pass stored to y, and h to h_out where has_h_out (streamed where
 * stream_h, which implies stream). */
KB_INLINE void KB_NAME(kb_row_normalize_vector)(const KB_T *x, const KB_T *residual, size_t i,
                                                size_t left, KB_V mean_hi, KB_V low,
                                                KB_V scale, KB_V beta, const KB_C *weight,
                                                const KB_C *bias, KB_T *y, KB_T *h_out,
                                                int has_residual, int has_h_out, int center,
                                                int has_weight, int has_bias, int stream,
                                                int stream_h) {
    KB_V h;
    KB_V out = KB_NAME(kb_row_normalize_value)(x, residual, i, left, mean_hi, low, scale, beta,
                                               weight, bias, has_residual, center, has_weight,
                                               has_bias, &h);
    KB_NAME(kb_put)(y + i, out, left, stream);
    if (has_h_out) KB_NAME(kb_put)(h_out + i, h, left, stream_h);
}

KB_INLINE void KB_NAME(kb_row_normalize_impl)(const KB_T *x, const KB_T *residual, KB_T *h_out,
                                              size_t n, KB_C mean_hi, KB_C mean_lo, KB_C scale,
                                              KB_C beta, const KB_C *weight, const KB_C *bias,
                                              KB_T *y, const char *next, int has_residual,
                                              int has_h_out, int center, int has_weight,
                                              int has_bias, int stream, int canonical,
                                              int blocked) {
    /* weight and bias in the family's pair order (kernels.h, FN_STORE_PARAMS_NATURAL) */
    const int block = KB_PAIR_BLOCK && blocked;
    KB_V mean_hi_v, low_v, scale_v, beta_v;
    KB_NAME(kb_normalize_constants)(mean_hi, mean_lo, scale, beta, center, has_weight || has_bias,
                                    &mean_hi_v, &low_v, &scale_v, &beta_v);
    stream = stream && KB_LANES > 1; /* the scalar family's "streaming" stores are plain */
    size_t i = 0, head = stream ? KB_NAME(kb_stream_head)(y, n) : 0;
    /* nothing aligned to stream to; or pairs in a family order, which must start at the
     * row's start (where the parameters' blocks start) */
    if (head == n || (block && head)) stream = head = 0;
    /* h streams where it sits like y, from the same element on, unless it overwrites an
     * input, whose lines are in cache and owned already (api_norm.c has the statistics pass
     * store such an h: fn_norm_spans) */
    const uintptr_t pair_bytes = 2 * KB_LANES * sizeof(KB_T);
    int stream_h = has_h_out && stream && h_out != (const void *)x &&
                   h_out != (const void *)residual &&
                   ((uintptr_t)h_out - (uintptr_t)y) % pair_bytes == 0;
    KB_V h, h1;
#define KB_VALUE(at, left)                                                                       \
    KB_NAME(kb_row_normalize_value)(x, residual, at, left, mean_hi_v, low_v, scale_v, beta_v,    \
                                    weight, bias, has_residual, center, has_weight, has_bias, &h)
#define KB_VECTOR(at, left, streamed)                                                            \
    KB_NAME(kb_row_normalize_vector)(x, residual, at, left, mean_hi_v, low_v, scale_v, beta_v,   \
                                     weight, bias, y, h_out, has_residual, has_h_out, center,    \
                                     has_weight, has_bias, streamed, (streamed) && stream_h)
    if (head) { /* unaligned start: a partial vector up to the first aligned element */
        KB_NAME(kb_stream_part)(y, KB_VALUE(0, head), head);
        if (has_h_out) KB_NAME(kb_stream_part)(h_out, h, head);
    }
    i = head;
    /* Two vectors per store in the vector families: AVX2 packs 16-bit results into one
     * 32-byte store instead of two 16-byte ones (bfloat16/float16 512x768 LayerNorm
     * 0.88-0.97x the time, 32768x768 0.89-0.96x); the scalar family keeps its one-value
     * loop, which the compiler vectorizes.  The loads of this pass come from cache (the
     * statistics pass just read them), so the load ports have room to fetch the caller's
     * next span meanwhile.  Parameters in natural order where the family's pairs have an
     * order of their own go a vector at a time. */
    const int pairs = KB_LANES > 1 && (block || !KB_PAIR_BLOCK);
    _Static_assert(KB_PAIR_BLOCK == 0 || KB_PAIR_BLOCK == 2 * KB_LANES, "a parameter block is a pair");
#define KB_PAIR(at, first, second)                                                               \
    KB_NAME(kb_row_normalize_pair)(x, residual, at, mean_hi_v, low_v, scale_v, beta_v, weight,   \
                                   bias, has_residual, center, has_weight, has_bias, &first,    \
                                   &second, &h, &h1)
#define KB_PREFETCH2(at)                                                                          \
    if (next) KB_NAME(kb_prefetch_lines)(next, at, 2 * KB_LANES);
    if (stream) {
        /* pairs start where y is aligned for a two-vector streaming store (in a family
         * order: at the row's start, and the store needs one vector's alignment) */
        if (pairs && !block && (uintptr_t)(y + i) % pair_bytes && i + KB_LANES <= n) {
            KB_VECTOR(i, KB_LANES, 1);
            i += KB_LANES;
        }
        for (; pairs && i + 2 * KB_LANES <= n; i += 2 * KB_LANES) {
            KB_PREFETCH2(i);
            KB_V first, second;
            KB_PAIR(i, first, second);
            kb_stream2(y + i, first, second, canonical);
            if (stream_h)
                kb_stream2(h_out + i, h, h1, 0);
            else if (has_h_out)
                kb_store2(h_out + i, h, h1, 0);
        }
        for (; i + KB_LANES <= n; i += KB_LANES) KB_VECTOR(i, KB_LANES, 1);
        if (i < n) {
            KB_NAME(kb_stream_part)(y + i, KB_VALUE(i, n - i), n - i);
            if (has_h_out) KB_NAME(kb_stream_part)(h_out + i, h, n - i);
        }
        return;
    }
    for (; pairs && i + 2 * KB_LANES <= n; i += 2 * KB_LANES) {
        KB_PREFETCH2(i);
        KB_NAME(kb_prefetch_store)(y + i, 2 * KB_LANES);
        KB_V first, second;
        KB_PAIR(i, first, second);
        kb_store2(y + i, first, second, canonical);
        if (has_h_out) kb_store2(h_out + i, h, h1, 0);
    }
#undef KB_PREFETCH2
#undef KB_PAIR
    /* where the parameters are in natural order again: after the last full pair block */
    const size_t natural = block ? n / (2 * KB_LANES) * (2 * KB_LANES) : 0;
    for (; i + KB_LANES <= n; i += KB_LANES) {
        if (next) KB_NAME(kb_prefetch_lines)(next, i, KB_LANES);
        KB_VECTOR(i, KB_LANES, 0);
    }
    /* the last partial vector: out of place, a full vector ending at n (rewriting a few
     * outputs with the same values) is much cheaper than a masked store (Zen 3: VMASKMOVPS
     * to memory is microcoded).  Not where an input is overwritten already: y or h over
     * x, h over residual.  (The streaming path above ends its rows itself: a plain store
     * into a line still being streamed costs that line's write-combining flush and a
     * read, 1.25x the time of a 25 MB BatchNorm eval.)  Not into a pair block either (its
     * parameters are in the family's order). */
    int overwritten = (const void *)x == (const void *)y ||
                      (has_h_out && (h_out == (const void *)x || h_out == (const void *)residual));
    if (i < n && n >= KB_LANES && n - KB_LANES >= natural && !overwritten)
        KB_VECTOR(n - KB_LANES, KB_LANES, 0);
    else if (i < n)
        KB_VECTOR(i, n - i, 0);
#undef KB_VECTOR
#undef KB_VALUE
}

/* Where y is not on a vector boundary (NumPy puts arrays 16 bytes past a cache line) and
 * the row is neither streamed (that loop aligns itself) nor in a family order (AVX2
 * bfloat16, whose parameter blocks start at the row's start), the caller runs kb_row_normalize_impl from y's first vector boundary over a whole number of
 * vectors, so that no store and, where the caller placed x and the parameters as y
 * (fn_row_params), no load splits across two lines; it stores the row's first and last
 * vectors, full and unaligned, after that loop, which is right in place too (their
 * overlap with the loop's outputs is rewritten with the same values).  Returns the
 * loop's first element (0: no such loop, the row as it is) and its length in *body, and
 * computes the two vectors (and their h where h_first is not NULL), flags tested at run
 * time: two vectors a row do not need a variant of their own (a copy of the whole pass per variant doubled the compile time).
 * (Computing the last vector after the loop took 1.04x the time of LayerNorm 512x768;
 * running the loop from the boundary by index inside kb_row_normalize_impl cost four
 * instructions of index arithmetic per pair.) */
KB_INLINE size_t KB_NAME(kb_row_edges)(const KB_T *x, const KB_T *residual, size_t n,
                                       KB_C mean_hi, KB_C mean_lo, KB_C scale, KB_C beta,
                                       const KB_C *weight, const KB_C *bias, int center,
                                       const KB_T *y, int stream, size_t *body, KB_V *first,
                                       KB_V *last, KB_V *h_first, KB_V *h_last, int blocked) {
    if (KB_LANES == 1 || (KB_PAIR_BLOCK && blocked) || stream) return 0;
    size_t lead = KB_NAME(kb_stream_head)(y, n);
    if (!lead || lead + 2 * KB_LANES > n) return 0;
    KB_V mean_hi_v, low_v, scale_v, beta_v;
    KB_NAME(kb_normalize_constants)(mean_hi, mean_lo, scale, beta, center, weight || bias,
                                    &mean_hi_v, &low_v, &scale_v, &beta_v);
#define KB_EDGE(at, h)                                                                              \
    KB_NAME(kb_row_normalize_value)(x, residual, at, KB_LANES, mean_hi_v, low_v, scale_v, beta_v,   \
                                    weight, bias, residual != NULL, center, weight != NULL,         \
                                    bias != NULL, h)
    *first = KB_EDGE(0, h_first);
    *last = KB_EDGE(n - KB_LANES, h_last);
#undef KB_EDGE
    *body = (n - lead) / KB_LANES * KB_LANES;
    return lead;
}

/* The mean pair (mean_hi, mean_lo) as compute-dtype values: float64 keeps the caller's
 * pair (shift, shifted mean), exact where one double would round at large offsets;
 * float32 splits the double sum into a high/low float pair. */
KB_INLINE void KB_NAME(kb_mean_pair)(double mean, double mean_lo, KB_C *hi, KB_C *lo) {
    if (sizeof(KB_C) == sizeof(double)) {
        *hi = (KB_C)mean;
        *lo = (KB_C)mean_lo;
    } else {
        double total = mean + mean_lo;
        *hi = (KB_C)total;
        *lo = (KB_C)(total - (double)*hi);
    }
}

/* row_normalize with weight and bias in the family's pair order (blocked, a constant) or in
 * natural order */
KB_INLINE void KB_NAME(kb_row_normalize_any)(const void *x, const void *residual,
                                             void *residual_out, size_t n, double mean,
                                             double mean_lo, double scale, double beta,
                                             const void *weight, const void *bias, void *y,
                                             const void *next, int store, int blocked) {
    const KB_T *xs = (const KB_T *)x, *rs = (const KB_T *)residual;
    KB_T *hs = (KB_T *)residual_out;
    const char *nx = (const char *)next;
    int stream = store & FN_STORE_STREAM;
    /* a variant where it pays; parameters in natural order come without (fn_row_params) */
    int canonical = KB_CANONICAL && blocked && (store & FN_STORE_NAN_CANONICAL);
    const KB_C *ws = (const KB_C *)weight, *bs = (const KB_C *)bias;
    KB_T *ys = (KB_T *)y;
    KB_C hi, lo, sc = (KB_C)scale, be = (KB_C)beta;
    KB_NAME(kb_mean_pair)(mean, mean_lo, &hi, &lo);
    int center = mean != 0.0 || mean_lo != 0.0;
    /* from y's vector boundary where kb_row_edges finds one */
    size_t body = n;
    KB_V first = kb_set1(0), last = first, h_first = first, h_last = first;
    size_t lead = KB_NAME(kb_row_edges)(xs, rs, n, hi, lo, sc, be, ws, bs, center, ys, stream,
                                        &body, &first, &last, hs ? &h_first : NULL,
                                        hs ? &h_last : NULL, blocked);
    if (lead) {
        xs += lead;
        rs = rs ? rs + lead : NULL;
        hs = hs ? hs + lead : NULL;
        ws = ws ? ws + lead : NULL;
        bs = bs ? bs + lead : NULL;
        nx = nx ? nx + lead * sizeof(KB_T) : NULL;
    }
    int flags = (canonical ? 16 : 0) | (rs ? 8 : 0) | (center ? 4 : 0) | (ws ? 2 : 0) | (bs ? 1 : 0);
    /* a switch of constant flags lets the compiler emit one tight loop per variant (and drop
     * the canonical ones where KB_CANONICAL is 0); whether a residual's h is stored is
     * tested in the loop (a variant of its own per residual variant doubled the compile
     * time) */
#define KB_CASE(f)                                                                              \
    case f:                                                                                     \
        KB_NAME(kb_row_normalize_impl)(xs, rs, hs, body, hi, lo, sc, be, ws, bs, ys + lead, nx, \
                                       (f) & 8, (f) & 8 && hs, (f) & 4, (f) & 2, (f) & 1, stream, \
                                       (f) & 16, blocked);                                      \
        break;
    switch (flags) {
        KB_CASE(0) KB_CASE(1) KB_CASE(2) KB_CASE(3) KB_CASE(4) KB_CASE(5) KB_CASE(6) KB_CASE(7)
        KB_CASE(8) KB_CASE(9) KB_CASE(10) KB_CASE(11) KB_CASE(12) KB_CASE(13) KB_CASE(14)
        KB_CASE(15) KB_CASE(16) KB_CASE(17) KB_CASE(18) KB_CASE(19) KB_CASE(20) KB_CASE(21)
        KB_CASE(22) KB_CASE(23) KB_CASE(24) KB_CASE(25) KB_CASE(26) KB_CASE(27) KB_CASE(28)
        KB_CASE(29) KB_CASE(30) KB_CASE(31)
    }
#undef KB_CASE
    if (lead) {
        kb_store(ys, first);
        kb_store(ys + n - KB_LANES, last);
        if (hs) {
            kb_store(hs - lead, h_first);
            kb_store(hs - lead + n - KB_LANES, h_last);
        }
    }
}

/* row_normalize with weight and bias in natural order where the family's pairs have an
 * order of their own (FN_STORE_PARAMS_NATURAL), out of line, so that the paired variants
 * compile as they would alone: with the order a runtime flag inside row_normalize,
 * bfloat16 LayerNorm 32768x768 took 1.05-1.07x the time (Zen 3, in-process A/B, both
 * orders); out of line 0.98-1.02. */
static __attribute__((noinline)) void KB_NAME(kb_row_normalize_natural)(
    const void *x, const void *residual, void *residual_out, size_t n, double mean,
    double mean_lo, double scale, double beta, const void *weight, const void *bias, void *y,
    const void *next, int store) {
    KB_NAME(kb_row_normalize_any)(x, residual, residual_out, n, mean, mean_lo, scale, beta,
                                  weight, bias, y, next, store, 0);
}

static void KB_NAME(row_normalize)(const void *x, const void *residual, void *residual_out,
                                   size_t n, double mean, double mean_lo, double scale,
                                   double beta, const void *weight, const void *bias, void *y,
                                   const void *next, int store) {
    if (KB_PAIR_BLOCK && (store & FN_STORE_PARAMS_NATURAL))
        KB_NAME(kb_row_normalize_natural)(x, residual, residual_out, n, mean, mean_lo, scale,
                                          beta, weight, bias, y, next, store);
    else
        KB_NAME(kb_row_normalize_any)(x, residual, residual_out, n, mean, mean_lo, scale, beta,
                                      weight, bias, y, next, store, 1);
}

/* rows_affine's rows joined into one sequence: vectors from y's first vector boundary on,
 * each with its row's constants, and where the next row starts inside a vector, the two
 * rows' constants blended at that lane (a row has at least FN_AFFINE_ROW_MIN values, more
 * than a vector's lanes, so a vector holds at most one start).  The row path paid for each
 * row's line-aligned edges and loop setup, a large share of a short row.  The same
 * arithmetic as the row path, so the same bits.  In-process A/B against the row path,
 * BatchNorm eval NCHW, 1 thread, time per call: (8, 256, 14, 14) 0.92-0.95, (8, 2048, 7, 7)
 * 0.84, (16, 512, 7, 7) 0.86, (32, 64, 28, 28) 0.96, (8, 64, 56, 56) 0.88-0.93, (4, 8, 128,
 * 128) 0.95-1.01; training 0.91-1.00; streamed outputs (32, 64, 56, 56) 1.02-1.05 and
 * (64, 3, 224, 224) 0.97-1.05, within this VM's noise.  Each row's constants are three
 * broadcasts from the caller's per-channel arrays (fn_affine_params), not converted from
 * float64 again at every row (about 35 instructions a row, each sample's rows again).
 * Zen 3, in-process A/B against those conversions, same bits, time per call, 1 thread:
 * BatchNorm eval NCHW float32 (8, 256, 14, 14) 0.92-0.96 (2 threads 0.94), (16, 512, 7,
 * 7) 0.86, (8, 2048, 7, 7) 0.72-0.88, bfloat16 (8, 256, 14, 14) 0.87-0.92, float64
 * 0.96-0.99; training (8, 2048, 7, 7) 0.96; GroupNorm 0.98-1.02. */
KB_INLINE void KB_NAME(kb_rows_affine_joined)(const KB_T *x, size_t rows, size_t n, size_t first,
                                              size_t channels, const KB_C *his, const KB_C *scs,
                                              const KB_C *betas, KB_T *y, int stream) {
    size_t total = rows * n, c = first % channels, row_end = n;
    KB_V hi = kb_set1(his[c]), sc = kb_set1(scs[c]), beta = kb_set1(betas[c]); /* the row's */
#define KB_AFFINE(h, m, s, b) kb_fma(kb_sub(h, m), s, b)
    size_t i = KB_NAME(kb_stream_head)(y, total);
    if (i >= KB_LANES) /* y off its elements' alignment: kb_stream_head gives the whole span */
        i = 0, stream = 0;
    if (i) /* up to y's first vector boundary, inside the first row (n > lanes) */
        KB_NAME(kb_put)(y, KB_AFFINE(kb_load_n(x, i), hi, sc, beta), i, stream);
    for (;;) {
        size_t stop = row_end < total ? row_end : total;
        for (; i + KB_LANES <= stop; i += KB_LANES) {
            if (!stream) KB_NAME(kb_prefetch_store)(y + i, KB_LANES);
            KB_NAME(kb_put)(y + i, KB_AFFINE(kb_load(x + i), hi, sc, beta), KB_LANES, stream);
        }
        if (i >= total) break;
        size_t count = total - i < KB_LANES ? total - i : KB_LANES;
        KB_V h = count == KB_LANES ? kb_load(x + i) : kb_load_n(x + i, count);
        if (row_end >= total) { /* the last row's tail */
            KB_NAME(kb_put)(y + i, KB_AFFINE(h, hi, sc, beta), count, stream);
            break;
        }
        /* the vector where the next row starts: its first `own` lanes are this row's */
        size_t own = row_end - i;
        KB_V prev_hi = hi, prev_sc = sc, prev_beta = beta;
        c = c + 1 == channels ? 0 : c + 1;
        hi = kb_set1(his[c]), sc = kb_set1(scs[c]), beta = kb_set1(betas[c]);
        KB_NAME(kb_put)(y + i, KB_AFFINE(h, kb_blend_n(prev_hi, hi, own), kb_blend_n(prev_sc, sc, own),
                                         kb_blend_n(prev_beta, beta, own)),
                        count, stream);
        i += count;
        row_end += n;
    }
}

static void KB_NAME(rows_affine)(const void *x, size_t rows, size_t n, size_t first,
                                 size_t channels, const void *hi, const void *scale,
                                 const void *beta, void *y, int store) {
    int stream = store & FN_STORE_STREAM;
    const KB_C *his = (const KB_C *)hi, *scs = (const KB_C *)scale, *betas = (const KB_C *)beta;
    if (KB_LANES > 1) {
        KB_NAME(kb_rows_affine_joined)((const KB_T *)x, rows, n, first, channels, his, scs, betas,
                                       (KB_T *)y, stream);
        return;
    }
    /* the scalar family: row by row, a plain loop its compiler vectorizes */
    const KB_T *xs = (const KB_T *)x;
    KB_T *ys = (KB_T *)y;
    for (size_t r = 0, c = first % channels; r < rows; ++r, c = c + 1 == channels ? 0 : c + 1) {
        const KB_V row_hi = kb_set1(his[c]), row_sc = kb_set1(scs[c]), row_beta = kb_set1(betas[c]);
        for (size_t j = r * n; j < (r + 1) * n; ++j)
            kb_store(ys + j, KB_AFFINE(kb_load(xs + j), row_hi, row_sc, row_beta));
    }
}
#undef KB_AFFINE

/* ---- row normalize with the next row's statistics -------------------------------- */

/* `count` elements of the cursor's pass after the statistics step at element `at`, from
 * step KB_CURSOR_LAG on */
KB_INLINE void KB_NAME(kb_cursor_run)(KB_NAME(kb_cursor) *cursor, size_t at, size_t count,
                                      int fused) {
    if (KB_LANES == 1) return; /* the scalar family: the pass runs whole after the statistics */
    if (at < KB_CURSOR_LAG * count) return;
    const KB_V mean_hi = cursor->mean_hi, low = cursor->low, scale = cursor->scale;
    const KB_V beta = cursor->beta;
    size_t i = cursor->i, stop = cursor->end - i < count ? cursor->end : i + count;
    for (; i + 2 * KB_LANES <= stop; i += 2 * KB_LANES) {
        if (!(fused & 32)) KB_NAME(kb_prefetch_store)(cursor->y + i, 2 * KB_LANES);
        KB_V first, second, unused;
        KB_NAME(kb_row_normalize_pair)(cursor->x, NULL, i, mean_hi, low, scale, beta,
                                       cursor->weight, cursor->bias, 0, fused & 16, fused & 2,
                                       fused & 4, &first, &second, &unused, &unused);
        if (fused & 32)
            kb_stream2(cursor->y + i, first, second, fused & 8);
        else
            kb_store2(cursor->y + i, first, second, fused & 8);
    }
    cursor->i = i;
}

/* For which kinds (bit 1 << fastnorm_norm_kind_t) row_stats_normalize fuses a streamed pass
 * too (kernels.h, stream_fused): where the statistics are short enough to share a loop
 * with a pass of streaming stores, the raw sums' (KB_SQUARES: LayerNorm and RMSNorm;
 * float16 LayerNorm 32768x768 0.96, 65536x384 0.90, 131072x320 0.91 against the two
 * kernels with its raw sums) or a half-precision RMSNorm's (KB_STREAM_FUSED_RMS,
 * simd_avx512.h).  A row's streamed stores came in a burst after its
 * statistics' reads, and waited: perf, bfloat16 LayerNorm 32768x768, 19% of the normalize
 * pass's samples on its streaming store.  In-process A/B against the two kernels, time
 * per call: LayerNorm bfloat16 32768x768 0.90-0.92 (2 threads 0.89), 131072x320 0.92;
 * RMSNorm, against its row order, 0.79-0.81 and 0.76-0.78 (2 threads 0.99).  float16
 * LayerNorm summed about a center, whose statistics took 2.5 times as long, lost:
 * 1.03-1.06 (2 threads 0.96);
 * float32 LayerNorm 65536x384 0.85-1.02, 131072x256 0.99, 40000x500 1.03; float32
 * RMSNorm 65536x384 1.21. */
#if defined(KB_SQUARES)
enum { KB_NAME(stream_fused) = 1 << FASTNORM_LAYER_NORM | 1 << FASTNORM_RMS_NORM };
#elif defined(KB_STREAM_FUSED_RMS)
enum { KB_NAME(stream_fused) = 1 << FASTNORM_RMS_NORM };
#else
enum { KB_NAME(stream_fused) = 0 };
#endif

/* row_stats_normalize with a weight or (!has_weight) without one. */
KB_INLINE void KB_NAME(kb_row_stats_normalize_impl)(const void *x_next, size_t n, double shift,
                                                    int center, double *mean_shifted, double *m2,
                                                    const void *x, double mean, double mean_lo,
                                                    double scale, double beta,
                                                    const void *weight, const void *bias, void *y,
                                                    int store, const void *x_after,
                                                    double *first_center, int has_weight) {
    const KB_T *xs = (const KB_T *)x, *next = (const KB_T *)x_next;
    /* x_next's first center as the call before took it, and x_after's, taken first so that
     * its loads and sums overlap this call (kernels.h) */
    KB_C given_center = 0, *given = NULL;
    double after_center = __builtin_nan("");
    if (first_center && center) {
        if (!__builtin_isnan(*first_center))
            given_center = (KB_C)*first_center, given = &given_center;
#ifndef KB_SQUARES /* whose LayerNorm sums take no center (kb_row_stats_impl) */
        if (x_after && n >= 2 * KB_STREAMS * KB_LANES)
            after_center = (double)KB_NAME(kb_step_center_of)((const KB_T *)x_after);
#endif
    }
    if (first_center) *first_center = after_center;
    const KB_C *ws = (const KB_C *)weight, *bs = (const KB_C *)bias;
    KB_T *ys = (KB_T *)y;
    KB_C hi, lo, sc = (KB_C)scale, be = (KB_C)beta;
    KB_NAME(kb_mean_pair)(mean, mean_lo, &hi, &lo);
    int normalize_center = mean != 0.0 || mean_lo != 0.0;
    int canonical = KB_CANONICAL && (store & FN_STORE_NAN_CANONICAL);
    /* LayerNorm (both passes centred) or RMSNorm (neither, no bias), streamed only with a
     * weight, where stream_fused says so and the row holds its head, a vector up to a pair
     * boundary and a pair, and parameters in the family's pair order: anything else as the
     * two kernels one after the other (each variant is a copy of both loops) */
    int kind = center ? FASTNORM_LAYER_NORM : FASTNORM_RMS_NORM;
    int stream = (store & FN_STORE_STREAM) && (KB_NAME(stream_fused) >> kind & 1) && has_weight;
    size_t head = stream ? KB_NAME(kb_stream_head)(ys, n) : 0;
    const uintptr_t pair_bytes = 2 * KB_LANES * sizeof(KB_T);
    int fits = (!(store & FN_STORE_STREAM) || (stream && head + 3 * KB_LANES <= n)) &&
               normalize_center == !!center && (center || !bs) &&
               !(KB_PAIR_BLOCK && (store & FN_STORE_PARAMS_NATURAL));
    if (!fits) {
        KB_NAME(row_normalize)(x, NULL, NULL, n, mean, mean_lo, scale, beta, weight, bias, y, NULL,
                               store);
        KB_NAME(row_stats)(x_next, NULL, NULL, n, shift, center, 0, mean_shifted, m2);
        return; /* x_next's center taken again, the same */
    }
    size_t body = n;
    KB_V first = kb_set1(0), last = first;
    size_t lead = KB_NAME(kb_row_edges)(xs, NULL, n, hi, lo, sc, be, ws, bs, center, ys, stream,
                                        &body, &first, &last, NULL, NULL, 1);
    if (stream) { /* streamed up to y's first pair boundary, as row_normalize streams */
        KB_V mh, lw, scv, bv, h;
        KB_NAME(kb_normalize_constants)(hi, lo, sc, be, center, 1, &mh, &lw, &scv, &bv);
        if (head)
            KB_NAME(kb_stream_part)(ys, KB_NAME(kb_row_normalize_value)(
                                            xs, NULL, 0, head, mh, lw, scv, bv, ws, bs, 0,
                                            center, 1, bs != NULL, &h), head);
        lead = head;
        if ((uintptr_t)(ys + lead) % pair_bytes) {
            KB_NAME(kb_row_normalize_vector)(xs, NULL, lead, KB_LANES, mh, lw, scv, bv, ws, bs,
                                             ys, NULL, 0, 0, center, 1, bs != NULL, 1, 0);
            lead += KB_LANES;
        }
        body = n - lead;
    }
    KB_NAME(kb_cursor) cursor = {xs + lead, ws ? ws + lead : NULL, bs ? bs + lead : NULL,
                                 ys + lead, 0, body / (2 * KB_LANES) * (2 * KB_LANES),
                                 kb_set1(0), kb_set1(0), kb_set1(0), kb_set1(0)};
    KB_NAME(kb_normalize_constants)(hi, lo, sc, be, center, ws || bs, &cursor.mean_hi,
                                    &cursor.low, &cursor.scale, &cursor.beta);
    int flags = 1 | (ws ? 2 : 0) | (bs ? 4 : 0) | (canonical ? 8 : 0) | (center ? 16 : 0) |
                (stream ? 32 : 0);
    /* the statistics with the pass's first pairs, then the rest of the pass as
     * row_normalize runs it (same arithmetic per element, so the same results); a
     * streamed pass means an input past the cache, whose statistics read ahead as
     * row_stats's do (api_norm.c) */
#define KB_CASE(f)                                                                                \
    case f:                                                                                       \
        KB_NAME(kb_row_stats_impl)(next, NULL, NULL, n, shift, (f) & 16, mean_shifted, m2, 0, 0,  \
                                   &cursor, f, 1, (f) & 32, given);                               \
        KB_NAME(kb_row_normalize_impl)(cursor.x + cursor.i, NULL, NULL, body - cursor.i, hi, lo,  \
                                       sc, be, cursor.weight ? cursor.weight + cursor.i : NULL,   \
                                       cursor.bias ? cursor.bias + cursor.i : NULL,               \
                                       cursor.y + cursor.i, NULL, 0, 0, (f) & 16, (f) & 2,        \
                                       (f) & 4, (f) & 32, (f) & 8, 1);                            \
        break;
    if (has_weight) switch (KB_CANONICAL ? flags : flags & ~8) {
        KB_CASE(3) KB_CASE(19) KB_CASE(23) KB_CASE(11) KB_CASE(27) KB_CASE(31)
#if defined(KB_SQUARES) || defined(KB_STREAM_FUSED_RMS)
        KB_CASE(35) KB_CASE(43)
#endif
#ifdef KB_SQUARES
        KB_CASE(51) KB_CASE(55) KB_CASE(59) KB_CASE(63)
#endif
    }
    else switch (KB_CANONICAL ? flags : flags & ~8) {
        KB_CASE(1) KB_CASE(17) KB_CASE(21) KB_CASE(9) KB_CASE(25) KB_CASE(29)
    }
#undef KB_CASE
#ifdef KB_SQUARES
    if (!KB_NAME(kb_dot_kept)(n, center, shift, *mean_shifted, *m2)) /* as in row_stats */
        KB_NAME(kb_row_stats_again)(next, NULL, NULL, n, shift, center, mean_shifted, m2);
#endif
    if (lead && !stream) {
        kb_store(ys, first);
        kb_store(ys + n - KB_LANES, last);
    }
}

/* row_stats_normalize without a weight (LayerNorm without parameters or with a bias alone,
 * RMSNorm without a weight), never streamed: in-process A/B against the two kernels, time
 * per call, 1 thread, LayerNorm / RMSNorm, 512x768: float32 0.79 / 0.87-0.89, bfloat16
 * 0.75-0.77 / 0.72-0.73, float16 0.79-0.80 / 0.72-0.75; LayerNorm float32 64x768
 * 0.73-0.74.  A function of its own: as
 * more cases of one switch, they cost the variants with a weight 1.03-1.07x the time
 * (RMSNorm float32 512x768, 256x1024; the compiler kept a loop counter on the stack). */
static __attribute__((noinline)) void KB_NAME(kb_row_stats_normalize_bare)(
    const void *x_next, size_t n, double shift, int center, double *mean_shifted, double *m2,
    const void *x, double mean, double mean_lo, double scale, double beta, const void *bias,
    void *y, int store, const void *x_after, double *first_center) {
    KB_NAME(kb_row_stats_normalize_impl)(x_next, n, shift, center, mean_shifted, m2, x, mean,
                                         mean_lo, scale, beta, NULL, bias, y, store, x_after,
                                         first_center, 0);
}

/* row_normalize of x (no residual, no next) and row_stats of x_next (no residual), n
 * elements each, with the same results, in one loop where they fit one (kernels.h). */
static void KB_NAME(row_stats_normalize)(const void *x_next, size_t n, double shift, int center,
                                         double *mean_shifted, double *m2, const void *x,
                                         double mean, double mean_lo, double scale,
                                         double beta, const void *weight, const void *bias,
                                         void *y, int store, const void *x_after,
                                         double *first_center) {
    if (!weight)
        KB_NAME(kb_row_stats_normalize_bare)(x_next, n, shift, center, mean_shifted, m2, x, mean,
                                             mean_lo, scale, beta, bias, y, store, x_after,
                                             first_center);
    else
        KB_NAME(kb_row_stats_normalize_impl)(x_next, n, shift, center, mean_shifted, m2, x, mean,
                                             mean_lo, scale, beta, weight, bias, y, store,
                                             x_after, first_center, 1);
}
