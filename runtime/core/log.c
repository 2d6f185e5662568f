/* log.c — the library's logger and environment switches.
 *
 *   FLX_LOG_LEVEL = error | warn | info | debug   what fluxion prints to stderr (default: nothing;
 *                                                 errors are reported to the caller through the
 *                                                 returned status and flx_last_error, not printed)
 *   FLX_FUSION = 0                                new contexts start with elementwise fusion off
 *                                                 (flx_set_fusion changes it per context)
 *
 * All are read once per process (call_once), so the logger is thread-safe and costs one load
 * and compare when a message is below the level. Each message is formatted into a local buffer
 * and written with one stdio call, so lines of concurrent threads do not interleave. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <threads.h>

#include "internal.h"

static int g_level;
static bool g_no_fusion; /* FLX_FUSION=0 */
static once_flag g_env_once = ONCE_FLAG_INIT;

/* ASCII case-insensitive equality (strcasecmp is POSIX, not C11). */
static bool same(const char *a, const char *b) {
    for (; *a && *b; a++, b++) {
        char x = (*a >= 'A' && *a <= 'Z') ? (char)(*a - 'A' + 'a') : *a;
        if (x != *b) return false;
    }
    return *a == *b;
}

static void read_env(void) {
    const char *v = getenv("FLX_LOG_LEVEL");
    g_level = FLX_LOG_OFF;
    if (v && *v) {
        if (same(v, "error")) g_level = FLX_LOG_ERROR;
        else if (same(v, "warn") || same(v, "warning")) g_level = FLX_LOG_WARN;
        else if (same(v, "info")) g_level = FLX_LOG_INFO;
        else if (same(v, "debug")) g_level = FLX_LOG_DEBUG;
        else if (same(v, "off") || same(v, "none") || same(v, "0")) g_level = FLX_LOG_OFF;
        else {
            g_level = FLX_LOG_WARN;
            fprintf(stderr,
                    "fluxion[warn]: FLX_LOG_LEVEL=%s is not one of error, warn, info, debug; "
                    "using warn\n",
                    v);
        }
    }
    const char *f = getenv("FLX_FUSION");
    g_no_fusion = f && !strcmp(f, "0");
}

int flx_log_level(void) {
    call_once(&g_env_once, read_env);
    return g_level;
}

void flx_log_msg(int level, const char *fmt, ...) {
    if (level <= FLX_LOG_OFF || level > flx_log_level()) return;
    static const char *const names[] = {"off", "error", "warn", "info", "debug"};
    char line[1024];
    int n = snprintf(line, sizeof line, "fluxion[%s]: ", names[level]);
    if (n < 0) return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line + n, sizeof line - (size_t)n, fmt, ap);
    va_end(ap);
    size_t len = strlen(line);
    if (len + 1 < sizeof line) {
        line[len] = '\n';
        line[len + 1] = '\0';
    } else {
        line[sizeof line - 2] = '\n';
    }
    fputs(line, stderr);
}

bool flx_env_fusion(void) {
    call_once(&g_env_once, read_env);
    return !g_no_fusion;
}
