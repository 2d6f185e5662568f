/* index.c — CPU gather (index_select) and scatter-add (index_add) kernels. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "cpu_common.h"

/* ---- index ------------------------------------------------------------------------------------ */
flx_status flx_cpu_index(flx_ctx *ctx, const flx_index_args *ar) {
    (void)ctx;
    size_t es = flx_dtype_size(ar->dtype);
    const char *src = (const char *)ar->src;
    char *out = (char *)ar->out;
    if (ar->mode == FLX_INDEX_SELECT) {
        for (int64_t o = 0; o < ar->outer; o++)
            for (int64_t j = 0; j < ar->n_idx; j++) {
                int64_t t = load_i(ar->idx_dtype, ar->idx, j);
                char *dst = out + (size_t)((o * ar->n_idx + j) * ar->inner) * es;
                if (t < 0 || t >= ar->n_src) {
                    flx_kerr_raise(ar->err, FLX_KERR_INDEX_RANGE, t, 0, ar->n_src, j);
                    memset(dst, 0, (size_t)ar->inner * es);
                    continue;
                }
                memcpy(dst, src + (size_t)((o * ar->n_src + t) * ar->inner) * es, (size_t)ar->inner * es);
            }
        return FLX_OK;
    }
    /* ADD: out (outer, n_src, inner) = sum of src (outer, n_idx, inner) rows by index. The halves
     * accumulate in double scratch and round once at the end (summing in 8 or 11 bits would lose
     * small rows against large partial sums); f32 and f64 accumulate in place. */
    int64_t total = ar->outer * ar->n_src * ar->inner;
    double *acc = NULL;
    if (flx_dtype_is_half(ar->dtype)) {
        acc = (double *)calloc((size_t)(total ? total : 1), sizeof *acc);
        if (!acc) return flx_set_error(FLX_ERR_OUT_OF_MEMORY, "cpu index_add: out of host memory");
    } else {
        for (int64_t i = 0; i < total; i++) store(ar->dtype, ar->out, i, 0);
    }
    for (int64_t o = 0; o < ar->outer; o++)
        for (int64_t j = 0; j < ar->n_idx; j++) {
            int64_t t = load_i(ar->idx_dtype, ar->idx, j);
            if (t < 0 || t >= ar->n_src) {
                flx_kerr_raise(ar->err, FLX_KERR_INDEX_RANGE, t, 0, ar->n_src, j);
                continue;
            }
            for (int64_t i = 0; i < ar->inner; i++) {
                int64_t d = (o * ar->n_src + t) * ar->inner + i;
                double v = load(ar->dtype, ar->src, (o * ar->n_idx + j) * ar->inner + i);
                if (acc) acc[d] += v;
                else store(ar->dtype, ar->out, d, load(ar->dtype, ar->out, d) + v);
            }
        }
    if (acc) {
        for (int64_t i = 0; i < total; i++) store(ar->dtype, ar->out, i, acc[i]);
        free(acc);
    }
    return FLX_OK;
}

