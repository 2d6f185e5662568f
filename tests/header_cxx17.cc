// header_cxx17.cc — fluxion.h must compile as C++17 with -Wall -Wextra -Wpedantic -Werror
// (compiled by the header.cxx17 CTest), with C linkage for its functions.
#include "fluxion/fluxion.h"

#include <type_traits>

static_assert(std::is_same<decltype(&flx_version), const char *(*)(void)>::value,
              "flx_version signature");

extern "C" int flx_header_check_cxx(void);
int flx_header_check_cxx(void) {
    flx_ctx_stats st{};
    flx_device d{FLX_DEVICE_CPU, 0};
    (void)st;
    (void)d;
    return static_cast<int>(sizeof(flx_gradcheck_report)) + FLX_MAX_DIMS + static_cast<int>(FLX_OK);
}
