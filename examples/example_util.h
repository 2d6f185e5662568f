/* example_util.h — the small helpers the example programs share: a monotonic clock for step
 * timings and the splitmix64 generator (shuffles, synthetic data, initial weights: the same
 * stream on every platform, unlike rand()). Include it after defining _POSIX_C_SOURCE 200809L
 * (clock_gettime is POSIX, and the examples build as strict C11). */
#ifndef FLX_EXAMPLE_UTIL_H
#define FLX_EXAMPLE_UTIL_H

#include <stdint.h>
#include <time.h>

/* Seconds on the monotonic clock. */
static inline double ex_now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* The next 64 random bits of the splitmix64 stream whose state is *s. */
static inline uint64_t ex_splitmix64(uint64_t *s) {
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

#endif
