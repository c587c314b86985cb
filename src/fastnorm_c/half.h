/*
 * half.h - exact scalar conversions between float32 and the two 16-bit float formats.
 *
 * Portable C (no intrinsics), so the scalar kernel family and every SIMD family's scalar
 * tails agree bit for bit.  Stores round to nearest, ties to even; NaNs stay NaN (quieted),
 * infinities stay infinite, float16 subnormals are handled exactly.
 */
#ifndef FASTNORM_HALF_H
#define FASTNORM_HALF_H

#include <stdint.h>
#include <string.h>

static inline float fastnorm_bits_to_f32(uint32_t bits) {
    float value;
    memcpy(&value, &bits, sizeof value);
    return value;
}

static inline uint32_t fastnorm_f32_to_bits(float value) {
    uint32_t bits;
    memcpy(&bits, &value, sizeof bits);
    return bits;
}

static inline float fastnorm_bf16_to_f32(uint16_t h) { return fastnorm_bits_to_f32((uint32_t)h << 16); }

static inline uint16_t fastnorm_f32_to_bf16(float value) {
    uint32_t bits = fastnorm_f32_to_bits(value);
    if ((bits & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((bits >> 16) | 0x0040u); /* quiet NaN */
    bits += 0x7fffu + ((bits >> 16) & 1u);                                               /* ties to even */
    return (uint16_t)(bits >> 16);
}

static inline float fastnorm_f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exponent = (h >> 10) & 0x1fu;
    uint32_t mantissa = h & 0x3ffu;
    if (exponent == 0x1fu) return fastnorm_bits_to_f32(sign | 0x7f800000u | (mantissa << 13));
    if (exponent != 0) return fastnorm_bits_to_f32(sign | ((exponent + 112u) << 23) | (mantissa << 13));
    /* zero or subnormal: mantissa * 2^-24 is exact in float32 */
    float magnitude = (float)mantissa * 5.9604644775390625e-8f;
    return sign ? -magnitude : magnitude;
}

static inline uint16_t fastnorm_f32_to_f16(float value) {
    uint32_t bits = fastnorm_f32_to_bits(value);
    uint16_t sign = (uint16_t)((bits >> 16) & 0x8000u);
    uint32_t magnitude = bits & 0x7fffffffu;
    if (magnitude > 0x7f800000u) return (uint16_t)(sign | 0x7e00u | ((magnitude >> 13) & 0x3ffu)); /* NaN */
    if (magnitude >= 0x477ff000u) return (uint16_t)(sign | 0x7c00u); /* rounds to >= 65520: inf */
    if (magnitude < 0x38800000u) {
        /* result is a float16 subnormal (or zero): round magnitude / 2^-24 to an integer */
        if (magnitude < 0x33000000u) return sign; /* below half the smallest subnormal */
        uint32_t exponent = magnitude >> 23;
        uint32_t mantissa = (magnitude & 0x7fffffu) | 0x800000u;
        uint32_t shift = 126u - exponent; /* 14..24 */
        uint32_t result = mantissa >> shift;
        uint32_t remainder = mantissa & ((1u << shift) - 1u);
        uint32_t halfway = 1u << (shift - 1u);
        if (remainder > halfway || (remainder == halfway && (result & 1u))) result++;
        return (uint16_t)(sign | result);
    }
    /* normal: rebias the exponent, round 13 dropped bits to nearest even */
    uint32_t rebased = magnitude - 0x38000000u;
    rebased += 0xfffu + ((rebased >> 13) & 1u);
    return (uint16_t)(sign | (rebased >> 13));
}

#endif /* FASTNORM_HALF_H */
