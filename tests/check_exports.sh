#!/bin/sh
# check_exports.sh LIB — fails unless every dynamic symbol LIB defines is part of the public API
# (prefixed flx_), the public API is there at all (flx_version, flx_ctx_create) and the SONAME
# carries the major version (libfluxion.so.<major>). Run by CTest (tests/CMakeLists.txt).
set -u
lib=${1:?usage: check_exports.sh path/to/libfluxion.so [major]}
major=${2:-}
[ -f "$lib" ] || { echo "FAIL: no such library: $lib"; exit 1; }
command -v nm >/dev/null 2>&1 || { echo "FAIL: nm not found (binutils)"; exit 1; }
syms=$(nm -D --defined-only "$lib" | awk 'NF >= 3 { print $3 }') || { echo "FAIL: nm -D failed"; exit 1; }
# Symbols the toolchain itself puts in every shared library.
leaks=$(printf '%s\n' "$syms" | grep -v '^flx_' |
        grep -vE '^(_init|_fini|_edata|_end|__bss_start|_DYNAMIC|_GLOBAL_OFFSET_TABLE_)$' |
        grep -v '^$')
status=0
if [ -n "$leaks" ]; then
    echo "FAIL: $lib exports $(printf '%s\n' "$leaks" | wc -l) symbol(s) outside the flx_ API:"
    printf '%s\n' "$leaks" | head -n 50 | sed 's/^/    /'
    status=1
fi
for want in flx_version flx_ctx_create flx_backward; do
    printf '%s\n' "$syms" | grep -qx "$want" || { echo "FAIL: $lib does not export $want"; status=1; }
done
if [ -n "$major" ] && command -v readelf >/dev/null 2>&1; then
    soname=$(readelf -d "$lib" | sed -n 's/.*Library soname: \[\(.*\)\].*/\1/p')
    if [ "$soname" != "libfluxion.so.$major" ]; then
        echo "FAIL: SONAME is '$soname', expected libfluxion.so.$major"
        status=1
    fi
fi
n=$(printf '%s\n' "$syms" | grep -c '^flx_')
[ "$status" = 0 ] && echo "OK: $n exported symbols, all flx_-prefixed${major:+; SONAME libfluxion.so.$major}"
exit $status
