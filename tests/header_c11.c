/* header_c11.c — fluxion.h must compile as C11 with -Wall -Wextra -Wpedantic -Werror (* compiled by the header.c11 CTest). Uses a few declarations so that they are checked too. */
#include "fluxion/fluxion.h"

#if !defined(FLX_VERSION_MAJOR) || !defined(FLX_VERSION_MINOR) || !defined(FLX_VERSION_PATCH)
#error "version macros missing"
#endif

int flx_header_check_c(void);
int flx_header_check_c(void) {
    flx_ctx_stats st = {0};
    flx_device d = {FLX_DEVICE_CPU, 0};
    flx_fn fn = 0;
    (void)st;
    (void)d;
    (void)fn;
    return (int)sizeof(flx_gradcheck_report) + FLX_MAX_DIMS + (int)FLX_OK;
}
