/* device.c — CUDA device queries, the current-device guard and the error helpers of the CUDA
 * backend (runtime/cuda/cuda_internal.h).
 *
 * The guard saves and restores the thread's current CUcontext through the driver's
 * cuCtxGetCurrent/cuCtxSetCurrent, fetched with cudaGetDriverEntryPoint* so the library does not
 * link libcuda (it still loads where no driver is installed). Restoring the exact context, rather
 * than calling cudaSetDevice(previous device), matters for a thread that had no current device:
 * cudaSetDevice(0) would create a context on device 0 and take its memory. */
#include <stdint.h>
#include <string.h>
#include <threads.h>

#include <cuda.h> /* CUcontext and CUresult types only: the functions come through entry points */

#include "cuda_internal.h"

flx_status flx_cuda_fail(cudaError_t e, const char *what) {
    (void)cudaGetLastError(); /* clear a non-sticky error so later calls are not blamed */
    return flx_set_error(e == cudaErrorMemoryAllocation ? FLX_ERR_OUT_OF_MEMORY : FLX_ERR_BACKEND,
                         "cuda: %s failed: %s (%s)", what, cudaGetErrorString(e),
                         cudaGetErrorName(e));
}

const char *flx_cuda_cublas_status_name(cublasStatus_t s) {
    switch (s) {
    case CUBLAS_STATUS_SUCCESS: return "CUBLAS_STATUS_SUCCESS";
    case CUBLAS_STATUS_NOT_INITIALIZED: return "CUBLAS_STATUS_NOT_INITIALIZED";
    case CUBLAS_STATUS_ALLOC_FAILED: return "CUBLAS_STATUS_ALLOC_FAILED";
    case CUBLAS_STATUS_INVALID_VALUE: return "CUBLAS_STATUS_INVALID_VALUE";
    case CUBLAS_STATUS_ARCH_MISMATCH: return "CUBLAS_STATUS_ARCH_MISMATCH";
    case CUBLAS_STATUS_MAPPING_ERROR: return "CUBLAS_STATUS_MAPPING_ERROR";
    case CUBLAS_STATUS_EXECUTION_FAILED: return "CUBLAS_STATUS_EXECUTION_FAILED";
    case CUBLAS_STATUS_INTERNAL_ERROR: return "CUBLAS_STATUS_INTERNAL_ERROR";
    case CUBLAS_STATUS_NOT_SUPPORTED: return "CUBLAS_STATUS_NOT_SUPPORTED";
    case CUBLAS_STATUS_LICENSE_ERROR: return "CUBLAS_STATUS_LICENSE_ERROR";
    default: return "unknown cuBLAS status";
    }
}

/* ---- current-device guard -------------------------------------------------------------------- */
typedef CUresult (*ctx_get_fn)(CUcontext *);
typedef CUresult (*ctx_set_fn)(CUcontext);
static once_flag g_entry_once = ONCE_FLAG_INIT;
static ctx_get_fn g_ctx_get;
static ctx_set_fn g_ctx_set;

static void *entry_point(const char *name) {
    void *fn = NULL;
    enum cudaDriverEntryPointQueryResult q = cudaDriverEntryPointSymbolNotFound;
#if CUDART_VERSION >= 12050
    cudaError_t e = cudaGetDriverEntryPointByVersion(name, &fn, 12000, cudaEnableDefault, &q);
#else
    cudaError_t e = cudaGetDriverEntryPoint(name, &fn, cudaEnableDefault, &q);
#endif
    if (e != cudaSuccess || q != cudaDriverEntryPointSuccess) {
        (void)cudaGetLastError();
        return NULL;
    }
    return fn;
}

static void load_entry_points(void) {
    ctx_get_fn get = (ctx_get_fn)entry_point("cuCtxGetCurrent");
    ctx_set_fn set = (ctx_set_fn)entry_point("cuCtxSetCurrent");
    if (get && set) {
        g_ctx_get = get;
        g_ctx_set = set;
    }
}

void *flx_cuda_current_context(void) {
    call_once(&g_entry_once, load_entry_points);
    CUcontext c = NULL;
    if (!g_ctx_get || g_ctx_get(&c) != CUDA_SUCCESS) return NULL;
    return (void *)c;
}

cudaError_t flx_cuda_enter_device(int device, void *cu_ctx, flx_cuda_guard *g) {
    g->switched = false;
    g->prev_ctx = NULL;
    g->prev_device = -1;
    call_once(&g_entry_once, load_entry_points);
    if (g_ctx_get) {
        CUcontext cur = NULL;
        if (g_ctx_get(&cur) != CUDA_SUCCESS) cur = NULL;
        if (cu_ctx && (void *)cur == cu_ctx) return cudaSuccess; /* already ours: nothing to undo */
        g->prev_ctx = (void *)cur;
    } else {
        int cur = -1;
        if (cudaGetDevice(&cur) != cudaSuccess) {
            (void)cudaGetLastError();
            cur = -1;
        }
        if (cur == device) return cudaSuccess;
        g->prev_device = cur;
    }
    cudaError_t e = cudaSetDevice(device);
    if (e != cudaSuccess) {
        (void)cudaGetLastError();
        return e;
    }
    g->switched = true;
    return cudaSuccess;
}

void flx_cuda_leave(flx_cuda_guard *g) {
    if (!g->switched) return;
    g->switched = false;
    if (g_ctx_get) {
        (void)g_ctx_set((CUcontext)g->prev_ctx); /* NULL: the thread had no current context */
    } else if (g->prev_device >= 0) {
        if (cudaSetDevice(g->prev_device) != cudaSuccess) (void)cudaGetLastError();
    }
}

flx_status flx_cuda_device_enter(flx_ctx *ctx, flx_device_saved *saved) {
    return flx_cuda_enter(ctx, saved);
}

void flx_cuda_device_leave(flx_ctx *ctx, flx_device_saved *saved) {
    (void)ctx;
    flx_cuda_leave(saved);
}

/* ---- device queries ---------------------------------------------------------------------------- */
int32_t flx_cuda_backend_device_count(void) {
    int n = 0;
    cudaError_t e = cudaGetDeviceCount(&n);
    if (e != cudaSuccess) {
        (void)cudaGetLastError();
        return 0;
    }
    return n < 0 ? 0 : (int32_t)n;
}

/* flx_cuda_device_info (runtime/core/context.c) has checked the index. */
flx_status flx_cuda_backend_device_info(int32_t index, flx_cuda_device_props *out) {
    struct cudaDeviceProp p;
    cudaError_t e = cudaGetDeviceProperties(&p, (int)index);
    if (e != cudaSuccess) {
        (void)cudaGetLastError();
        return flx_set_error(FLX_ERR_DEVICE, "flx_cuda_device_info: device %d: %s (%s)", (int)index,
                             cudaGetErrorString(e), cudaGetErrorName(e));
    }
    size_t n = strlen(p.name);
    if (n >= sizeof out->name) n = sizeof out->name - 1;
    memcpy(out->name, p.name, n);
    out->name[n] = '\0';
    out->major = p.major;
    out->minor = p.minor;
    out->total_memory = (uint64_t)p.totalGlobalMem;
    out->multiprocessors = p.multiProcessorCount;
    return FLX_OK;
}
