// solver_common.cuh — what the launchers on the vendor libraries (lu.cu, eigh.cu) share: scratch
// from the backend's allocator, freed when the launcher returns, and the mapping of a cuSOLVER
// status to the launcher return codes of flx_kernels.h (FLX_LIB_RC_*). Private to the kernels.
#pragma once

#include <cusolverDn.h>

#include "cuda_common.cuh"

namespace flxk {

// Up to kMax blocks from the context's stream-ordered allocator: freeing them right after the
// work that uses them is queued is safe (the free is ordered after it on the stream).
struct Scratch {
    static constexpr int kMax = 6;
    const flx_cuda_lib_env *env;
    void *p[kMax] = {};
    int n = 0;
    explicit Scratch(const flx_cuda_lib_env *e) : env(e) {}
    Scratch(const Scratch &) = delete;
    Scratch &operator=(const Scratch &) = delete;
    void *get(size_t bytes) {
        if (n >= kMax) return nullptr;
        void *q = env->alloc(env->actx, bytes ? bytes : 16);
        if (q) p[n++] = q;
        return q;
    }
    ~Scratch() {
        for (int i = 0; i < n; i++) env->free(env->actx, p[i]);
    }
};

inline int solver_rc(cusolverStatus_t s) {
    return s == CUSOLVER_STATUS_SUCCESS ? 0 : FLX_LIB_RC_CUSOLVER - (int)s;
}

} // namespace flxk
