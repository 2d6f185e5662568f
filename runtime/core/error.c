/* error.c — per-thread status and message; never aborts. Also host allocation that reports its
 * failure as a status, so callers need no message of their own. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

static _Thread_local flx_status tl_status = FLX_OK;
static _Thread_local char tl_msg[1024];

flx_status flx_last_status(void) { return tl_status; }
const char *flx_last_error(void) { return tl_status == FLX_OK ? "" : tl_msg; }
void flx_clear_error(void) {
    tl_status = FLX_OK;
    tl_msg[0] = '\0';
}

static flx_status set_error_v(flx_status s, const char *fmt, va_list ap) {
    tl_status = s;
    vsnprintf(tl_msg, sizeof tl_msg, fmt, ap);
    return s;
}

flx_status flx_set_error(flx_status s, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    set_error_v(s, fmt, ap);
    va_end(ap);
    return s;
}

flx_status flx_set_error_if_clear(flx_status s, const char *fmt, ...) {
    if (tl_status != FLX_OK) return tl_status;
    va_list ap;
    va_start(ap, fmt);
    set_error_v(s, fmt, ap);
    va_end(ap);
    return s;
}

void *flx_host_calloc(size_t n, size_t size, const char *who) {
    void *p = calloc(n, size);
    if (!p) flx_set_error(FLX_ERR_OUT_OF_MEMORY, "%s: out of host memory", who);
    return p;
}

void flx_free_each(void *const *ptrs, size_t n) {
    for (size_t i = 0; i < n; i++) free(ptrs[i]);
}

const char *flx_status_string(flx_status s) {
    switch (s) {
    case FLX_OK: return "FLX_OK";
    case FLX_ERR_INVALID_ARGUMENT: return "FLX_ERR_INVALID_ARGUMENT";
    case FLX_ERR_SHAPE: return "FLX_ERR_SHAPE";
    case FLX_ERR_DTYPE: return "FLX_ERR_DTYPE";
    case FLX_ERR_DEVICE: return "FLX_ERR_DEVICE";
    case FLX_ERR_OUT_OF_MEMORY: return "FLX_ERR_OUT_OF_MEMORY";
    case FLX_ERR_BACKEND: return "FLX_ERR_BACKEND";
    case FLX_ERR_NOT_DIFFERENTIABLE: return "FLX_ERR_NOT_DIFFERENTIABLE";
    case FLX_ERR_UNSUPPORTED: return "FLX_ERR_UNSUPPORTED";
    case FLX_ERR_STATE: return "FLX_ERR_STATE";
    case FLX_ERR_NUMERIC: return "FLX_ERR_NUMERIC";
    case FLX_ERR_TIMEOUT: return "FLX_ERR_TIMEOUT";
    }
    return "FLX_ERR_UNKNOWN";
}

/* Rotating buffers so that one message may describe several tensors. */
static _Thread_local char tl_desc[8][128];
static _Thread_local int tl_desc_next;

const char *flx_shape_str(int32_t ndim, const int64_t *shape) {
    char *b = tl_desc[tl_desc_next++ & 7];
    size_t n = 0;
    n += (size_t)snprintf(b + n, 128 - n, "(");
    for (int32_t i = 0; i < ndim && n < 120; i++)
        n += (size_t)snprintf(b + n, 128 - n, i ? ", %lld" : "%lld", (long long)shape[i]);
    snprintf(b + n, 128 - n, ")");
    return b;
}

const char *flx_describe(const flx_tensor *t) {
    if (!t) return "NULL";
    const char *s = flx_shape_str(t->ndim, t->shape);
    char *b = tl_desc[tl_desc_next++ & 7];
    snprintf(b, 128, "%s %s", s, flx_dtype_name(t->dtype));
    return b;
}
