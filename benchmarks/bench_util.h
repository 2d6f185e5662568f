/* bench_util.h — timing helpers shared by the C benchmarks: the examples' monotonic clock
 * (ex_now_s, examples/example_util.h) and the median of a sample. Host clocks only: benchmarks see
 * the public API, never CUDA headers, so device work is bracketed by flx_ctx_synchronize. */
#ifndef FLX_BENCH_UTIL_H
#define FLX_BENCH_UTIL_H

#include <stdlib.h>

#include "example_util.h"

static inline int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* Median of v[0..n) (sorts v in place). */
static inline double median_of(double *v, int n) {
    qsort(v, (size_t)n, sizeof *v, cmp_double);
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

#endif
