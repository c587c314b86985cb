/*
 * api_layout.c - fastnorm_copy_to_c_order: the C-order copy of a transposed input, tiled.
 *
 * Why: the entry points read C-contiguous arrays, so a Fortran-order or channels-last
 * input is copied to C order first.  NumPy's copy of such a transpose moves one item at
 * a time along the destination's rows, each from a different cache line of the source:
 * 14 ms for a Fortran-order 4096x768 float32 array, against 3.1 ms for these tiles and
 * 14.4 ms for layer_norm of it in all (ctypes probe, this machine, 1 thread).  Tiles a
 * cache line long each way did best: 16x16 float32 items (32x32: 3.6 ms, 64x64: 8.7
 * ms), 8x8 float64 (3.8 ms; 16x16: 4.3 ms).
 */
#include <string.h>

#include "fastnorm/fastnorm.h"

enum { FN_LINE_BYTES = 64 };

/* The nf x nl plane at src (item strides sf, sl in bytes) into dst, whose rows are df
 * items apart, in tiles of `tile` x `tile` items; the source's lines are read down the
 * tile's columns.  size: the item size, a constant where this is inlined. */
static inline __attribute__((always_inline)) void fn_copy_plane(
    const char *src, char *dst, size_t nf, size_t nl, ptrdiff_t sf, ptrdiff_t sl, size_t df,
    size_t size) {
    const size_t tile = FN_LINE_BYTES / size;
    for (size_t f0 = 0; f0 < nf; f0 += tile) {
        size_t f_end = nf - f0 < tile ? nf : f0 + tile;
        for (size_t l0 = 0; l0 < nl; l0 += tile) {
            size_t l_end = nl - l0 < tile ? nl : l0 + tile;
            for (size_t l = l0; l < l_end; ++l)
                for (size_t f = f0; f < f_end; ++f)
                    memcpy(dst + (f * df + l) * size, src + (ptrdiff_t)f * sf + (ptrdiff_t)l * sl,
                           size);
        }
    }
}

static void fn_copy_plane_sized(const char *src, char *dst, size_t nf, size_t nl, ptrdiff_t sf,
                                ptrdiff_t sl, size_t df, size_t size) {
    switch (size) { /* a constant size each, so that memcpy becomes one load and store */
    case 2: fn_copy_plane(src, dst, nf, nl, sf, sl, df, 2); break;
    case 4: fn_copy_plane(src, dst, nf, nl, sf, sl, df, 4); break;
    default: fn_copy_plane(src, dst, nf, nl, sf, sl, df, 8); break;
    }
}

/* A stride's size for choosing the plane's source axis; a broadcast axis (stride 0) reads
 * one item, so never that axis. */
static size_t fn_magnitude(ptrdiff_t stride) {
    return stride == 0 ? SIZE_MAX : stride < 0 ? (size_t)-stride : (size_t)stride;
}

fastnorm_status_t fastnorm_copy_to_c_order(size_t item_size, size_t ndim, const size_t *shape,
                                           const ptrdiff_t *src_strides, const void *src,
                                           void *dst) {
    if (item_size != 2 && item_size != 4 && item_size != 8) return FASTNORM_ERR_BAD_DTYPE;
    if (ndim < 1 || ndim > FASTNORM_MAX_DIMS) return FASTNORM_ERR_BAD_SHAPE;
    if (!shape || !src_strides) return FASTNORM_ERR_NULL_POINTER;
    size_t dst_stride[FASTNORM_MAX_DIMS], total = 1; /* dst's strides in items */
    for (size_t k = ndim; k-- > 0;) {
        dst_stride[k] = total;
        if (shape[k] && total > (size_t)PTRDIFF_MAX / item_size / shape[k])
            return FASTNORM_ERR_BAD_SHAPE;
        total *= shape[k];
    }
    if (total == 0) return FASTNORM_OK;
    if (!src || !dst) return FASTNORM_ERR_NULL_POINTER;

    /* the plane: the last axis (dst's rows) and the axis of the smallest stride (the
     * source's); when that is the last axis too, rows of one item across */
    size_t last = ndim - 1, fast = last;
    for (size_t k = 0; k < ndim; ++k)
        if (shape[k] > 1 && (shape[fast] == 1 ||
                             fn_magnitude(src_strides[k]) < fn_magnitude(src_strides[fast])))
            fast = k;
    size_t nf = fast == last ? 1 : shape[fast];
    ptrdiff_t sf = fast == last ? 0 : src_strides[fast];

    size_t index[FASTNORM_MAX_DIMS] = {0}; /* over the other axes, in C order */
    for (;;) {
        const char *s = src;
        char *d = dst;
        for (size_t k = 0; k < last; ++k) {
            if (k == fast) continue;
            s += (ptrdiff_t)index[k] * src_strides[k];
            d += index[k] * dst_stride[k] * item_size;
        }
        fn_copy_plane_sized(s, d, nf, shape[last], sf, src_strides[last], dst_stride[fast],
                            item_size);
        size_t k = last;
        do {
            if (k == 0) return FASTNORM_OK;
            --k;
        } while (k == fast || (++index[k] == shape[k] ? (index[k] = 0, 1) : 0));
    }
}
