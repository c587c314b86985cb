/*
 * stream_bytes.h - fn_stream_bytes, the streaming store of a row's partial first or last
 * vector (kernel_row_normalize.h, kb_stream_part), shared by the x86 SIMD families.
 */
#ifndef FASTNORM_STREAM_BYTES_H
#define FASTNORM_STREAM_BYTES_H

#include <emmintrin.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

/* `bytes` of src streamed to p, where p is 4-byte aligned: 4-byte pieces (MOVNTI) up to p's
 * first 16-byte boundary, 16-byte pieces, then 4-byte pieces.  Returns how many bytes it
 * streamed: all but a last piece under 4 bytes, or none where p is not 4-byte aligned.  A
 * row that does not start on 16 bytes (float32 rows of 131 values) thus shares its edge
 * lines with its neighbours through streaming stores alone: a plain store into a line being
 * streamed flushes the line's write-combining buffer and reads the line. */
static inline size_t fn_stream_bytes(void *p, const void *src, size_t bytes) {
    char *to = (char *)p;
    const char *from = (const char *)src;
    size_t b = 0;
    int32_t word;
    if ((uintptr_t)to % 4) return 0;
    for (; b + 4 <= bytes && (uintptr_t)(to + b) % 16; b += 4) {
        memcpy(&word, from + b, 4);
        _mm_stream_si32((int *)(to + b), word);
    }
    for (; b + 16 <= bytes; b += 16)
        _mm_stream_si128((__m128i *)(to + b), _mm_loadu_si128((const __m128i *)(from + b)));
    for (; b + 4 <= bytes; b += 4) {
        memcpy(&word, from + b, 4);
        _mm_stream_si32((int *)(to + b), word);
    }
    return b;
}

#endif /* FASTNORM_STREAM_BYTES_H */
