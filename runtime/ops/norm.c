/* norm.c — flx_norm: entrywise vector p-norms over a set of axes (p = 1, 2, inf
 * or any p >= 1; p = 2 over a matrix's two axes is the Frobenius norm). A composition of public
 * ops (Case B of docs/adding-an-op.md): it needs no row, kernel or rule of its own.
 *
 * Gradients at zero: the subgradient 0 is returned instead of NaN. The outer root is taken of
 * where(s > 0, s, 1) and the result selected back with where(s > 0, root, 0), so the root's
 * derivative is never evaluated at 0 and the selected-out branch contributes exactly 0 (the
 * "double where"); |x|'s derivative at 0 is 0 already. Higher derivatives stay finite too. */
#include <math.h>
#include <string.h>

#include "internal.h"

flx_tensor *flx_norm(flx_tensor *x, double p, int32_t n_axes, const int32_t *axes, bool keepdims) {
    static const char *op = "flx_norm";
    if (!flx_check_inputs(op, 1, &x)) return NULL;
    if (!flx_check_float(op, x)) return NULL;
    if (!(p >= 1.0)) { /* also rejects NaN */
        flx_set_error(FLX_ERR_INVALID_ARGUMENT,
                      "%s: p must be >= 1 or INFINITY (a norm), got %g for %s", op, p, flx_describe(x));
        return NULL;
    }
    if (n_axes < 0 || (n_axes > 0 && !axes)) {
        flx_set_error(FLX_ERR_INVALID_ARGUMENT, "%s: bad axes (n_axes %d, axes %p)", op, (int)n_axes,
                      (const void *)axes);
        return NULL;
    }
    /* count of reduced elements (max over an empty set is an error; that norm is 0) */
    int64_t cnt = n_axes == 0 ? x->numel : 1;
    for (int32_t i = 0; i < n_axes; i++) {
        int32_t ax;
        if (!flx_norm_axis(op, axes[i], x->ndim, &ax)) return NULL;
        cnt *= x->shape[ax];
    }
    if (flx_scope_begin() != FLX_OK) return NULL;
    flx_tensor *a = flx_abs(x), *r = NULL;
    if (isinf(p)) {
        r = cnt > 0 ? flx_max(a, n_axes, axes, keepdims) : flx_sum(a, n_axes, axes, keepdims);
    } else if (p == 1.0) {
        r = flx_sum(a, n_axes, axes, keepdims);
    } else {
        flx_tensor *s = flx_sum(p == 2.0 ? flx_square(x) : flx_pow_scalar(a, p), n_axes, axes, keepdims);
        if (s) {
            flx_tensor *zero = flx_scalar(x->ctx, x->dtype, 0.0), *one = flx_scalar(x->ctx, x->dtype, 1.0);
            flx_tensor *pos = flx_gt(s, zero);
            flx_tensor *safe = flx_where(pos, s, one);
            flx_tensor *root = p == 2.0 ? flx_sqrt(safe) : flx_pow_scalar(safe, 1.0 / p);
            r = flx_where(pos, root, zero);
        }
    }
    return flx_scope_return(r);
}
