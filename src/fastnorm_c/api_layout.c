/*
 * api_layout.c - fastnorm_copy_strided: a copy between two layouts of one shape, tiled.
 *
 * Why: the entry points read and write C-contiguous arrays, so a Fortran-order or
 * channels-last input is copied to C order first, and a result goes back into such an
 * out= after.  NumPy's copy between those layouts moves one item at a time along one
 * array's rows, each from or to a different cache line of the other: 12-15 ms for a
 * Fortran-order 4096x768 float32 array to C order, 220-260 ms for 8192x4096, against 1
 * and 10 ms for a plain copy of the same bytes.  Here the copy moves tiles a cache line
 * long each way (16x16 float32 items, 8x8 float64; 32x32 and 64x64 were slower), 4-byte
 * items in 4x4 blocks of SSE2 shuffles (x86-64's baseline), and past the caches 4- and
 * 8-byte items in blocks written as whole lines by streaming stores.  In-process A/B,
 * this machine, time per copy: the 4x4 blocks 0.51x the items one by one (Fortran
 * 4096x768 to C order), the streamed tiles 0.12-0.21x the blocks' plain stores (8192x4096
 * and 4096x4096, either way: 13-18 and 6-8 ms; float64 4096x4096 0.14, 12 ms).
 * Transposes of whole tiles in AVX-512 registers timed the same as these blocks, AVX2's
 * 1.6-1.9x in L2, so the copy has no kernel family of its own (docs/performance-log.md).
 * Copies of FN_PARALLEL_MIN_ELEMENTS items or more share their tiles out among the
 * threads, as the kernels share rows: on 2 threads 0.39-0.67x the time of 1 (64x768 to
 * 8192x4096, either way, and channels-last views).
 */
#include "api_internal.h"

enum { FN_LINE_BYTES = 64 };
/* Copies of at least fn_llc_stream_min_bytes() (api_internal.h: 8 MB, or a sixteenth of
 * the last-level cache where that is more), with rows of dst of at least
 * FN_STREAM_ROW_BYTES in a plane (so that most of a row is whole lines), write their whole
 * tiles with streaming stores.  In-process A/B against plain stores on the Xeon (300 MB
 * L3), float32, layer_norm's copy of a Fortran-order input to C order then its rows, and
 * its rows then the copy into a Fortran-order out=, time per call: 2048x1024 (8 MB)
 * 0.92 / 0.77, 4096x768 1.01 / 0.76, 4096x2048 0.79 / 0.49, 8192x2048 0.47 / 0.42.
 * Through the API, whose input copy is a new array each call, streaming 4096x768 took
 * 1.1-1.4x the time (presumably its rows then read the copy from memory, not the L3). */
#define FN_STREAM_ROW_BYTES 1024
#define FN_WALK_DST_MIN_BYTES ((size_t)256 << 10) /* fn_copy_plan's walk_dst */

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
#define FN_HAVE_TILES 1
/* The block at s (rows sa bytes apart) transposed: q[j] holds item j of its rows, 4x4
 * items of 4 bytes or 2x2 of 8.  Integer shuffles: the bits move, whatever they hold. */
static inline __attribute__((always_inline)) void fn_block(const char *s, ptrdiff_t sa,
                                                           __m128i q[4], size_t size) {
    if (size == 8) {
        __m128i r0 = _mm_loadu_si128((const __m128i *)s);
        __m128i r1 = _mm_loadu_si128((const __m128i *)(s + sa));
        q[0] = _mm_unpacklo_epi64(r0, r1);
        q[1] = _mm_unpackhi_epi64(r0, r1);
        return;
    }
    __m128i r0 = _mm_loadu_si128((const __m128i *)s);
    __m128i r1 = _mm_loadu_si128((const __m128i *)(s + sa));
    __m128i r2 = _mm_loadu_si128((const __m128i *)(s + 2 * sa));
    __m128i r3 = _mm_loadu_si128((const __m128i *)(s + 3 * sa));
    __m128i t0 = _mm_unpacklo_epi32(r0, r1), t1 = _mm_unpackhi_epi32(r0, r1);
    __m128i t2 = _mm_unpacklo_epi32(r2, r3), t3 = _mm_unpackhi_epi32(r2, r3);
    q[0] = _mm_unpacklo_epi64(t0, t2);
    q[1] = _mm_unpackhi_epi64(t0, t2);
    q[2] = _mm_unpacklo_epi64(t1, t3);
    q[3] = _mm_unpackhi_epi64(t1, t3);
}

/* A whole tile: dst[j * db + i * size] = src[i * sa + j * size], i, j < 64 / size.
 * Plain stores block by block, the blocks along dst's lines (a first) where along_dst,
 * else along src's (fastnorm_copy_strided says why).  Streamed, a band of a block's rows
 * of dst at a time, the four blocks along a line of dst kept and each line written by its
 * four quarters one after the other (whole lines for write-combining). */
static inline __attribute__((always_inline)) void fn_tile(const char *s, ptrdiff_t sa, char *d,
                                                          ptrdiff_t db, int along_dst,
                                                          int stream, size_t size) {
    const size_t side = 16 / size; /* a block's items each way */
    if (!stream) {
        for (size_t k = 0; k < 16; ++k) {
            size_t a = side * (along_dst ? k % 4 : k / 4), b = side * (along_dst ? k / 4 : k % 4);
            __m128i q[4];
            fn_block(s + (ptrdiff_t)a * sa + (ptrdiff_t)(b * size), sa, q, size);
            for (size_t j = 0; j < side; ++j)
                _mm_storeu_si128((__m128i *)(d + (ptrdiff_t)(b + j) * db + (ptrdiff_t)(a * size)),
                                 q[j]);
        }
        return;
    }
    for (size_t b = 0; b < FN_LINE_BYTES / size; b += side) {
        __m128i q[4][4];
        for (size_t k = 0; k < 4; ++k)
            fn_block(s + (ptrdiff_t)(k * side) * sa + (ptrdiff_t)(b * size), sa, q[k], size);
        for (size_t j = 0; j < side; ++j)
            for (size_t k = 0; k < 4; ++k)
                _mm_stream_si128((__m128i *)(d + (ptrdiff_t)(b + j) * db + 16 * k), q[k][j]);
    }
}

/* A tile cut short by the plane's edges or the streamed first line: wa rows of src, wb
 * items of each; the blocks that fit, the rest item by item, plain stores. */
static inline __attribute__((always_inline)) void fn_tile_part(const char *s, ptrdiff_t sa,
                                                               char *d, ptrdiff_t db, size_t wa,
                                                               size_t wb, size_t size) {
    const size_t side = 16 / size, whole_a = wa / side * side, whole_b = wb / side * side;
    for (size_t b = 0; b < whole_b; b += side)
        for (size_t a = 0; a < whole_a; a += side) {
            __m128i q[4];
            fn_block(s + (ptrdiff_t)a * sa + (ptrdiff_t)(b * size), sa, q, size);
            for (size_t j = 0; j < side; ++j)
                _mm_storeu_si128((__m128i *)(d + (ptrdiff_t)(b + j) * db + (ptrdiff_t)(a * size)),
                                 q[j]);
        }
    fn_copy_plane(s + (ptrdiff_t)whole_a * sa, d + (ptrdiff_t)(whole_a * size), wa - whole_a,
                  wb, sa, (ptrdiff_t)size, (ptrdiff_t)size, db, size);
    fn_copy_plane(s + (ptrdiff_t)(whole_b * size), d + (ptrdiff_t)whole_b * db, whole_a,
                  wb - whole_b, sa, (ptrdiff_t)size, (ptrdiff_t)size, db, size);
}

/* The tile of wa x wb items at item a of a and b of b (fn_copy_plane_tiled's plane). */
static inline __attribute__((always_inline)) void fn_tile_at(
    const char *src, char *dst, size_t a, size_t b, size_t wa, size_t wb, ptrdiff_t sa,
    ptrdiff_t db, int along_dst, int stream, size_t size) {
    const char *s = src + (ptrdiff_t)a * sa + (ptrdiff_t)(b * size);
    char *d = dst + (ptrdiff_t)b * db + (ptrdiff_t)(a * size);
    if (wa == FN_LINE_BYTES / size && wb == FN_LINE_BYTES / size)
        fn_tile(s, sa, d, db, along_dst, stream, size);
    else
        fn_tile_part(s, sa, d, db, wa, wb, size);
}

/* The na x nb plane of items of `size` bytes (4 or 8) whose src lines run along b and dst
 * lines along a: dst[b * db + a * size] = src[a * sa + b * size], tile by tile along dst's
 * lines (a first) where walk_dst, else along src's (b first).  stream: dst's rows share
 * their place on a line (db a multiple of it), and the whole tiles start at dst's first
 * line, the items before it in a tile apart. */
static inline __attribute__((always_inline)) void fn_copy_plane_tiled(
    const char *src, char *dst, size_t na, size_t nb, ptrdiff_t sa, ptrdiff_t db, int along_dst,
    int walk_dst, int stream, size_t size) {
    const size_t tile = FN_LINE_BYTES / size;
    size_t head = stream ? (FN_LINE_BYTES - (uintptr_t)dst % FN_LINE_BYTES) % FN_LINE_BYTES / size
                         : 0;
    if (head > na) head = na;
    if (walk_dst) {
        for (size_t b = 0, wb; b < nb; b += wb) {
            wb = nb - b < tile ? nb - b : tile;
            for (size_t a = 0, wa; a < na; a += wa) {
                wa = a == 0 && head ? head : (na - a < tile ? na - a : tile);
                fn_tile_at(src, dst, a, b, wa, wb, sa, db, along_dst, stream, size);
            }
        }
        return;
    }
    for (size_t a = 0, wa; a < na; a += wa) {
        wa = a == 0 && head ? head : (na - a < tile ? na - a : tile);
        for (size_t b = 0, wb; b < nb; b += wb) {
            wb = nb - b < tile ? nb - b : tile;
            fn_tile_at(src, dst, a, b, wa, wb, sa, db, along_dst, stream, size);
        }
    }
}

static void fn_copy_plane_tiled_sized(const char *src, char *dst, size_t na, size_t nb,
                                      ptrdiff_t sa, ptrdiff_t db, int along_dst, int walk_dst,
                                      int stream, size_t size) {
    if (size == 4)
        fn_copy_plane_tiled(src, dst, na, nb, sa, db, along_dst, walk_dst, stream, 4);
    else
        fn_copy_plane_tiled(src, dst, na, nb, sa, db, along_dst, walk_dst, stream, 8);
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

/* One copy's plane and its split: the planes of the other axes (in C order), each cut
 * into runs of `step` items of b, a whole number of tiles. */
typedef struct {
    const char *src;
    char *dst;
    size_t ndim, a, b, na, item_size, step;
    const size_t *shape;
    const ptrdiff_t *src_strides, *dst_strides;
    ptrdiff_t sa, da;
    int along_dst, walk_dst, tiled, stream;
} fn_copy_plan;

/* Items b0 .. b0 + step - 1 (or to the end) of b in plane `plane`. */
static void fn_copy_run(const fn_copy_plan *p, size_t plane, size_t b0) {
    const char *s = p->src;
    char *d = p->dst;
    for (size_t k = p->ndim; k-- > 0;) {
        if (k == p->a || k == p->b) continue;
        size_t i = plane % p->shape[k];
        plane /= p->shape[k];
        s += (ptrdiff_t)i * p->src_strides[k];
        d += (ptrdiff_t)i * p->dst_strides[k];
    }
    size_t nb = p->shape[p->b] - b0 < p->step ? p->shape[p->b] - b0 : p->step;
    ptrdiff_t sb = p->src_strides[p->b], db = p->dst_strides[p->b];
    s += (ptrdiff_t)b0 * sb;
    d += (ptrdiff_t)b0 * db;
#ifdef FN_HAVE_TILES
    if (p->tiled)
        fn_copy_plane_tiled_sized(s, d, p->na, nb, p->sa, db, p->along_dst, p->walk_dst,
                                  p->stream && (uintptr_t)d % p->item_size == 0, p->item_size);
    else
#endif
    if (p->along_dst)
        fn_copy_plane_sized(s, d, nb, p->na, sb, p->sa, db, p->da, p->item_size);
    else
        fn_copy_plane_sized(s, d, p->na, nb, p->sa, sb, p->da, db, p->item_size);
}

fastnorm_status_t fastnorm_copy_strided(size_t item_size, size_t ndim, const size_t *shape,
                                        const void *src, const ptrdiff_t *src_strides,
                                        void *dst, const ptrdiff_t *dst_strides,
                                        int n_threads) {
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

    fn_copy_plan p = {.src = src, .dst = dst, .ndim = ndim, .item_size = item_size,
                      .shape = shape, .src_strides = src_strides, .dst_strides = dst_strides};
    /* the plane: dst's fast axis (a) and src's (b); one axis alone when they agree, or
     * when every axis has one item (a single item) */
    p.b = fn_fastest_axis(ndim, shape, src_strides);
    p.a = fn_fastest_axis(ndim, shape, dst_strides);
    if (p.a == ndim) p.a = p.b = ndim - 1;
    if (p.b == ndim) p.b = p.a; /* every long axis broadcast: read along dst's */
    size_t a = p.a, b = p.b;
    p.na = a == b ? 1 : shape[a];
    p.sa = a == b ? 0 : src_strides[a];
    p.da = a == b ? 0 : dst_strides[a];
    /* A tile's inner loop (its blocks, in plain stores) runs along one array's lines and
     * strides across the other's; it strides the shorter way.  Lines a multiple of 4 KB
     * apart share an L1 set, and a tile's 16 of them in 12 ways thrashed: C order into a
     * Fortran-order 4096x768 float32 array (16 KB across) took 17 ms along src's lines item
     * by item, as long as NumPy's copy, and 1.43x the time in blocks. */
    p.along_dst = fn_magnitude(src_strides[a]) < fn_magnitude(dst_strides[b]);
    /* Transposes of 4-byte items in SSE2 blocks (fn_copy_plane_tiled), and of 8-byte ones
     * where streamed: in the caches their 2x2 blocks took 1.05-1.1x the time of the items
     * one by one (512x768 float64, a C loop), 4-byte items' 4x4 blocks 0.75x. */
    int transpose = a != b && src_strides[b] == (ptrdiff_t)item_size &&
                    dst_strides[a] == (ptrdiff_t)item_size;
    p.stream = transpose && (item_size == 4 || item_size == 8) &&
               total * item_size >= fn_llc_stream_min_bytes() &&
               dst_strides[b] % FN_LINE_BYTES == 0 && p.na * item_size >= FN_STREAM_ROW_BYTES;
    p.tiled = transpose && (item_size == 4 || p.stream);
    /* Tile after tile along src's lines writes dst a line of each row at a time, |db|
     * apart, and finishes a line split by a tile's edge only a column of tiles later.  The
     * tiles go along dst's lines instead where src's |sa| is not a multiple of 4 KB and
     * either |db| is (dst's lines share L1 and L2 sets) or the plane is FN_WALK_DST_MIN_BYTES
     * or more.  In-process A/B, float32, arrays placed anew each round, time per copy: C
     * order into a Fortran-order 1024x512 to 4096x768 array, or Fortran 768x1024 into C
     * order, 0.66-0.87; planes of 768 KB to 12 MB without 4 KB strides (512x512 to
     * 3000x1000, either way) 0.68-0.93.  Not where streamed (8192x768 1.49x the time, the
     * tiles' lines no longer written one after the other), nor where src aliases
     * (1024x1024 1.13, Fortran 1024x768 into C order 1.04-1.23), nor in smaller planes
     * (channels-last (1, 64, 56, 56) and (4, 64, 56, 56) views, 1.02-1.06; 200x200 1.05). */
    p.walk_dst = !p.stream && fn_magnitude(src_strides[a]) % 4096 != 0 &&
                 (fn_magnitude(dst_strides[b]) % 4096 == 0 ||
                  p.na * shape[b] * item_size >= FN_WALK_DST_MIN_BYTES);

    /* The threads share out the planes.  Fewer than 16 a thread that do not share out
     * evenly (a lone plane, 5 on 2 threads) are each cut along b into as many runs of whole
     * tiles as there are threads, so that the threads get about as many items. */
    int threads = fn_threads(n_threads, total);
    size_t nb = shape[b], planes = total / (p.na * nb), tile = FN_LINE_BYTES / item_size;
    size_t pieces = planes % (size_t)threads && planes < 16 * (size_t)threads ? (size_t)threads : 1;
    p.step = (nb / pieces + tile - 1) / tile * tile;
    if (p.step < tile) p.step = tile;
    pieces = (nb + p.step - 1) / p.step;
    FN_PARALLEL_FOR(w, planes * pieces,
                    fn_copy_run(&p, (size_t)w / pieces, (size_t)w % pieces * p.step););
    return FASTNORM_OK;
}
