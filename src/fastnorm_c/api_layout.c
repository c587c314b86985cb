/*
 * api_layout.c - fastnorm_copy_strided: a copy between two layouts of one shape, tiled.
 *
 * Why: the entry points read and write C-contiguous arrays, so a Fortran-order or
 * channels-last input is copied to C order first, and a result goes back into such an
 * out= after.  NumPy's copy between those layouts moves one item at a time along one
 * array's rows, each from or to a different cache line of the other: 14 ms for a
 * Fortran-order 4096x768 float32 array to C order, against 3.1 ms for these tiles item
 * by item (about half that in the float32 blocks below) and 14.4 ms for layer_norm of it
 * in all (ctypes probe, this machine, 1 thread).  Tiles a
 * cache line long each way did best: 16x16 float32 items (32x32: 3.6 ms, 64x64: 8.7
 * ms), 8x8 float64 (3.8 ms; 16x16: 4.3 ms).
 */
#include <string.h>

#include "fastnorm/fastnorm.h"

enum { FN_LINE_BYTES = 64 };

/* The na x nb plane of items (strides in bytes: sa, sb in src; da, db in dst), in tiles
 * of `tile` x `tile` items, each tile's inner loop along b.  size: the item size, a
 * constant where this is inlined. */
static inline __attribute__((always_inline)) void fn_copy_plane(
    const char *src, char *dst, size_t na, size_t nb, ptrdiff_t sa, ptrdiff_t sb, ptrdiff_t da,
    ptrdiff_t db, size_t size) {
    const size_t tile = FN_LINE_BYTES / size;
    for (size_t a0 = 0; a0 < na; a0 += tile) {
        size_t a_end = na - a0 < tile ? na : a0 + tile;
        for (size_t b0 = 0; b0 < nb; b0 += tile) {
            size_t b_end = nb - b0 < tile ? nb : b0 + tile;
            for (size_t a = a0; a < a_end; ++a)
                for (size_t b = b0; b < b_end; ++b)
                    memcpy(dst + (ptrdiff_t)a * da + (ptrdiff_t)b * db,
                           src + (ptrdiff_t)a * sa + (ptrdiff_t)b * sb, size);
        }
    }
}

static void fn_copy_plane_sized(const char *src, char *dst, size_t na, size_t nb, ptrdiff_t sa,
                                ptrdiff_t sb, ptrdiff_t da, ptrdiff_t db, size_t size) {
    switch (size) { /* a constant size each, so that memcpy becomes one load and store */
    case 2: fn_copy_plane(src, dst, na, nb, sa, sb, da, db, 2); break;
    case 4: fn_copy_plane(src, dst, na, nb, sa, sb, da, db, 4); break;
    default: fn_copy_plane(src, dst, na, nb, sa, sb, da, db, 8); break;
    }
}

#if defined(__SSE2__)
#include <emmintrin.h>
/* fn_copy_plane for 4-byte items whose source lines run along b and destination lines
 * along a (both a cache line of items apart in the other array): 4x4 blocks moved by
 * SSE shuffles (x86-64's baseline, so every build has them), the tile's edges item by
 * item.  b_outer: the blocks of a tile column by column (the inner loop striding across
 * src's lines), else row by row (across dst's).  In-process A/B against the item-by-item
 * tiles, time per copy: a Fortran-order 4096x768 float32 array to C order 0.51, C order
 * into Fortran 0.76, a channels-last (32, 64, 56, 56) view to C order 0.49. */
static void fn_copy_plane_4x4(const char *src, char *dst, size_t na, size_t nb, ptrdiff_t sa,
                              ptrdiff_t db, int b_outer) {
    const size_t tile = FN_LINE_BYTES / 4;
    for (size_t a0 = 0; a0 < na; a0 += tile) {
        size_t a_end = na - a0 < tile ? na : a0 + tile, a4 = a0 + (a_end - a0) / 4 * 4;
        for (size_t b0 = 0; b0 < nb; b0 += tile) {
            size_t b_end = nb - b0 < tile ? nb : b0 + tile, b4 = b0 + (b_end - b0) / 4 * 4;
            size_t blocks_a = (a4 - a0) / 4, blocks_b = (b4 - b0) / 4;
            for (size_t k = 0; k < blocks_a * blocks_b; ++k) {
                size_t a = a0 + 4 * (b_outer ? k % blocks_a : k / blocks_b);
                size_t b = b0 + 4 * (b_outer ? k / blocks_a : k % blocks_b);
                const char *s = src + (ptrdiff_t)a * sa + (ptrdiff_t)b * 4;
                __m128 r0 = _mm_loadu_ps((const float *)s);
                __m128 r1 = _mm_loadu_ps((const float *)(s + sa));
                __m128 r2 = _mm_loadu_ps((const float *)(s + 2 * sa));
                __m128 r3 = _mm_loadu_ps((const float *)(s + 3 * sa));
                _MM_TRANSPOSE4_PS(r0, r1, r2, r3);
                char *d = dst + (ptrdiff_t)b * db + (ptrdiff_t)a * 4;
                _mm_storeu_ps((float *)d, r0);
                _mm_storeu_ps((float *)(d + db), r1);
                _mm_storeu_ps((float *)(d + 2 * db), r2);
                _mm_storeu_ps((float *)(d + 3 * db), r3);
            }
            for (size_t a = a0; a < a_end; ++a) /* the edges: b past b4, and a past a4 */
                for (size_t b = a < a4 ? b4 : b0; b < b_end; ++b)
                    memcpy(dst + (ptrdiff_t)b * db + (ptrdiff_t)a * 4,
                           src + (ptrdiff_t)a * sa + (ptrdiff_t)b * 4, 4);
        }
    }
}
#endif

static size_t fn_magnitude(ptrdiff_t stride) {
    return stride < 0 ? (size_t)-stride : (size_t)stride;
}

/* The axis of the smallest stride among those longer than one item; a broadcast axis
 * (stride 0, a source's only) reads one item, so never that one.  ndim if none. */
static size_t fn_fastest_axis(size_t ndim, const size_t *shape, const ptrdiff_t *strides) {
    size_t best = ndim;
    for (size_t k = 0; k < ndim; ++k)
        if (shape[k] > 1 && strides[k] &&
            (best == ndim || fn_magnitude(strides[k]) < fn_magnitude(strides[best])))
            best = k;
    return best;
}

fastnorm_status_t fastnorm_copy_strided(size_t item_size, size_t ndim, const size_t *shape,
                                        const void *src, const ptrdiff_t *src_strides,
                                        void *dst, const ptrdiff_t *dst_strides) {
    if (item_size != 2 && item_size != 4 && item_size != 8) return FASTNORM_ERR_BAD_DTYPE;
    if (ndim < 1 || ndim > FASTNORM_MAX_DIMS) return FASTNORM_ERR_BAD_SHAPE;
    if (!shape || !src_strides || !dst_strides) return FASTNORM_ERR_NULL_POINTER;
    size_t total = 1;
    for (size_t k = 0; k < ndim; ++k) {
        if (shape[k] && total > (size_t)PTRDIFF_MAX / item_size / shape[k])
            return FASTNORM_ERR_BAD_SHAPE;
        total *= shape[k];
    }
    if (total == 0) return FASTNORM_OK;
    if (!src || !dst) return FASTNORM_ERR_NULL_POINTER;
    for (size_t k = 0; k < ndim; ++k) /* each item of dst written once */
        if (shape[k] > 1 && dst_strides[k] == 0) return FASTNORM_ERR_BAD_STRIDE;

    /* the plane: dst's fast axis (a) and src's (b); one axis alone when they agree, or
     * when every axis has one item (a single item) */
    size_t b = fn_fastest_axis(ndim, shape, src_strides);
    size_t a = fn_fastest_axis(ndim, shape, dst_strides);
    if (a == ndim) a = b = ndim - 1;
    if (b == ndim) b = a; /* every long axis broadcast: read along dst's */
    size_t na = a == b ? 1 : shape[a];
    ptrdiff_t sa = a == b ? 0 : src_strides[a], da = a == b ? 0 : dst_strides[a];
    /* A tile's inner loop runs along one array's lines and strides across the other's;
     * it strides the shorter way.  Lines a multiple of 4 KB apart share an L1 set, and a
     * tile's 16 of them in 12 ways thrashed: C order into a Fortran-order 4096x768 float32
     * array (16 KB across) took 17 ms along src's lines, as long as NumPy's copy. */
    int along_dst = fn_magnitude(src_strides[a]) < fn_magnitude(dst_strides[b]);

    size_t index[FASTNORM_MAX_DIMS] = {0}; /* over the other axes */
    for (;;) {
        const char *s = src;
        char *d = dst;
        for (size_t k = 0; k < ndim; ++k) {
            if (k == a || k == b) continue;
            s += (ptrdiff_t)index[k] * src_strides[k];
            d += (ptrdiff_t)index[k] * dst_strides[k];
        }
#if defined(__SSE2__)
        if (item_size == 4 && a != b && src_strides[b] == 4 && dst_strides[a] == 4)
            fn_copy_plane_4x4(s, d, na, shape[b], sa, dst_strides[b], along_dst);
        else
#endif
        if (along_dst)
            fn_copy_plane_sized(s, d, shape[b], na, src_strides[b], sa, dst_strides[b], da,
                                item_size);
        else
            fn_copy_plane_sized(s, d, na, shape[b], sa, src_strides[b], da, dst_strides[b],
                                item_size);
        size_t k = ndim;
        do {
            if (k == 0) return FASTNORM_OK;
            --k;
        } while (k == a || k == b || (++index[k] == shape[k] ? (index[k] = 0, 1) : 0));
    }
}
