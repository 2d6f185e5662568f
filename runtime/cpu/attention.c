/* attention.c — CPU reference kernels of the attention family (semantics: flx_attention_args in
 * kernels/flx_kernels.h). */
#include "cpu_common.h"

flx_status flx_cpu_attention(flx_ctx *ctx, const flx_attention_args *a) {
    (void)ctx;
    (void)a;
    return flx_set_error(FLX_ERR_UNSUPPORTED, "attention: CPU kernel not yet written");
}
