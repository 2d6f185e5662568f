/*
 * philox.h — Philox4x32-10 (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3", SC11),
 * shared by the CPU reference and the CUDA kernels so that a seed gives the same stream on both.
 *
 * Element i of a random tensor uses counter (i / 4, stream) and key (seed lo, seed hi), and takes
 * word i % 4 of the block. The stream is 0 for values drawn eagerly; a plan's replays of a random
 * fill use the run number (so each replay draws new values, and run 0 those of eager evaluation). Uniform floats take the top 24 (f32) or 53 (f64, two words) bits, so
 * they lie in [0, 1). Normals are Box-Muller on the pair of uniforms of words (2j, 2j+1) of the
 * same block (the cosine for even elements, the sine for odd ones).
 */
#ifndef FLX_PHILOX_H
#define FLX_PHILOX_H

#include <stdint.h>
#include <math.h>

#include "flx_unary_ops.h" /* FLX_HD */

typedef struct flx_philox4 {
    uint32_t v[4];
} flx_philox4;

static FLX_HD inline uint32_t flx_mulhilo32(uint32_t a, uint32_t b, uint32_t *hi) {
    uint64_t p = (uint64_t)a * (uint64_t)b;
    *hi = (uint32_t)(p >> 32);
    return (uint32_t)p;
}

static FLX_HD inline flx_philox4 flx_philox4x32_10(uint64_t counter, uint64_t stream, uint64_t seed) {
    uint32_t c0 = (uint32_t)counter, c1 = (uint32_t)(counter >> 32);
    uint32_t c2 = (uint32_t)stream, c3 = (uint32_t)(stream >> 32);
    uint32_t k0 = (uint32_t)seed, k1 = (uint32_t)(seed >> 32);
    for (int r = 0; r < 10; r++) {
        uint32_t hi0, hi1;
        uint32_t lo0 = flx_mulhilo32(0xD2511F53u, c0, &hi0);
        uint32_t lo1 = flx_mulhilo32(0xCD9E8D57u, c2, &hi1);
        uint32_t n0 = hi1 ^ c1 ^ k0, n1 = lo1, n2 = hi0 ^ c3 ^ k1, n3 = lo0;
        c0 = n0; c1 = n1; c2 = n2; c3 = n3;
        k0 += 0x9E3779B9u;
        k1 += 0xBB67AE85u;
    }
    flx_philox4 out;
    out.v[0] = c0; out.v[1] = c1; out.v[2] = c2; out.v[3] = c3;
    return out;
}

/* Uniform double in [0, 1) from two words (53 bits). */
static FLX_HD inline double flx_u01_f64(uint32_t hi, uint32_t lo) {
    uint64_t bits = ((uint64_t)hi << 21) ^ ((uint64_t)lo >> 11);
    return (double)(bits & ((1ull << 53) - 1)) * (1.0 / 9007199254740992.0);
}
/* Uniform float in [0, 1) from one word (24 bits). */
static FLX_HD inline float flx_u01_f32(uint32_t w) { return (float)(w >> 8) * (1.0f / 16777216.0f); }

/* Uniform in [0, 1) for element i, in double precision (f64) or single (f32 rounding of the
 * 24-bit value, exact in both). */
static FLX_HD inline double flx_philox_uniform(uint64_t i, uint64_t stream, uint64_t seed, int f64) {
    flx_philox4 r = flx_philox4x32_10(i >> 2, stream, seed);
    uint32_t w = r.v[i & 3];
    if (f64) return flx_u01_f64(w, r.v[(i + 1) & 3]);
    return (double)flx_u01_f32(w);
}

/* A uniform draw v = lo + (hi - lo) u (u < 1, so v < hi in double) stored as f32: rounding to 24
 * bits can still reach hi (u = 1 - 2^-24 maps to hi whenever hi - lo is not a power of two times
 * a float's spacing near hi), so such a value steps to the float below hi, never below lo. The
 * halves do the same with flx_half_next_down. */
static FLX_HD inline float flx_uniform_f32_below_hi(double v, double lo, double hi) {
    float f = (float)v;
    if (hi > lo && (double)f >= hi) {
        f = nextafterf(f, -INFINITY);
        if ((double)f < lo) f = (float)lo;
    }
    return f;
}

/* Standard normal for element i (Box-Muller in double on both backends). */
static FLX_HD inline double flx_philox_normal(uint64_t i, uint64_t stream, uint64_t seed) {
    flx_philox4 r = flx_philox4x32_10(i >> 2, stream, seed);
    int pair = (int)(i & 2);
    double u1 = flx_u01_f64(r.v[pair], r.v[pair + 1]);
    double u2 = flx_u01_f64(r.v[pair + 1], r.v[pair]);
    double rad = sqrt(-2.0 * log(1.0 - u1)); /* 1 - u1 in (0, 1]: finite */
    double ang = 6.283185307179586476925 * u2;
    return (i & 1) ? rad * sin(ang) : rad * cos(ang);
}

#endif /* FLX_PHILOX_H */
