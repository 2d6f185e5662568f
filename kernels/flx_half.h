/* flx_half.h — IEEE binary16 (f16) and bfloat16 (bf16) bit conversions, in plain C usable from
 * host code and CUDA device code alike. The CPU backend stores every half value through these, so
 * its results are the exact mathematical value rounded once, to nearest with ties to even (RNE),
 * which is what the GPU's __float2half_rn / __float2bfloat16_rn do from f32.
 *
 * Both formats are decoded by one routine parametrised by (exponent bits, mantissa bits):
 * f16 is (5, 10), bf16 is (8, 7). Rounding works on the double value directly (never through
 * f32, which would round twice), handles subnormals, rounds overflow to +-inf as IEEE requires
 * (anything at or above max + half an ulp), and maps every NaN to the canonical quiet NaN with
 * its sign kept. Conversion to double is exact for every bit pattern. */
#ifndef FLX_HALF_H
#define FLX_HALF_H

#include <math.h>
#include <stdint.h>

#if defined(__CUDACC__)
#define FLX_HALF_FN static inline __host__ __device__
#else
#define FLX_HALF_FN static inline
#endif

#define FLX_F16_EBITS 5
#define FLX_F16_MBITS 10
#define FLX_BF16_EBITS 8
#define FLX_BF16_MBITS 7

/* Rounds v to the format with ebits exponent and mbits mantissa bits (1 + ebits + mbits <= 16). */
FLX_HALF_FN uint16_t flx_half_from_double(double v, int ebits, int mbits) {
    const uint16_t sign = signbit(v) ? (uint16_t)(1u << (ebits + mbits)) : 0;
    const uint16_t exp_all = (uint16_t)(((1u << ebits) - 1u) << mbits);
    if (isnan(v)) return (uint16_t)(sign | exp_all | (1u << (mbits - 1))); /* quiet NaN */
    double a = fabs(v);
    if (isinf(a)) return (uint16_t)(sign | exp_all);
    if (a == 0) return sign;
    const int bias = (1 << (ebits - 1)) - 1;
    const int emin = 1 - bias;
    int k;
    (void)frexp(a, &k); /* a = m 2^k, m in [0.5, 1) */
    int e = k - 1;      /* a in [2^e, 2^(e+1)) */
    if (e < emin) e = emin; /* subnormal range: fixed quantum */
    if (e > bias) return (uint16_t)(sign | exp_all);
    /* r = a / quantum, exact (scaling by a power of two well inside double's range). */
    double r = ldexp(a, mbits - e);
    double n = floor(r);
    double frac = r - n;
    if (frac > 0.5 || (frac == 0.5 && fmod(n, 2.0) != 0)) n += 1;
    const double one = ldexp(1.0, mbits); /* the implicit leading bit */
    if (n >= 2 * one) { /* rounding carried into the next binade */
        n = one;
        e += 1;
        if (e > bias) return (uint16_t)(sign | exp_all);
    }
    if (n < one) return (uint16_t)(sign | (uint16_t)n); /* subnormal (e == emin) */
    return (uint16_t)(sign | (uint16_t)((unsigned)(e + bias) << mbits) | (uint16_t)(n - one));
}

/* The exact value of bits in the format (ebits, mbits). */
FLX_HALF_FN double flx_half_to_double(uint16_t bits, int ebits, int mbits) {
    const int bias = (1 << (ebits - 1)) - 1;
    const unsigned emask = (1u << ebits) - 1u;
    const unsigned mmask = (1u << mbits) - 1u;
    const unsigned ex = ((unsigned)bits >> mbits) & emask;
    const unsigned m = (unsigned)bits & mmask;
    const double s = (bits >> (ebits + mbits)) & 1u ? -1.0 : 1.0;
    if (ex == emask) return m ? copysign((double)NAN, s) : s * (double)INFINITY;
    if (ex == 0) return s * ldexp((double)m, 1 - bias - mbits);
    return s * ldexp((double)(m | (1u << mbits)), (int)ex - bias - mbits);
}

FLX_HALF_FN uint16_t flx_f16_from_double(double v) {
    return flx_half_from_double(v, FLX_F16_EBITS, FLX_F16_MBITS);
}
FLX_HALF_FN uint16_t flx_bf16_from_double(double v) {
    return flx_half_from_double(v, FLX_BF16_EBITS, FLX_BF16_MBITS);
}
FLX_HALF_FN double flx_f16_to_double(uint16_t h) {
    return flx_half_to_double(h, FLX_F16_EBITS, FLX_F16_MBITS);
}
FLX_HALF_FN double flx_bf16_to_double(uint16_t h) {
    return flx_half_to_double(h, FLX_BF16_EBITS, FLX_BF16_MBITS);
}

/* The pattern one step toward -inf from bits, in either format (both are sign-magnitude); +-0
 * steps to the smallest negative subnormal. Uniform fills use it, on every backend, for a draw
 * below hi that rounded up to hi (for [0, 1) in bf16, one draw in 512). */
FLX_HALF_FN uint16_t flx_half_next_down(uint16_t bits) {
    if ((bits & 0x7fffu) == 0) return 0x8001u;
    return (bits & 0x8000u) ? (uint16_t)(bits + 1u) : (uint16_t)(bits - 1u);
}

#undef FLX_HALF_FN
#endif
