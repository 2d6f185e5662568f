// copy_index.cu — CUDA kernels of the copy family (strided copies for permute, broadcast, slice,
// pad, concat, diag, diagonal) and the index family (SELECT and its transpose ADD).
//
// copy: dims are coalesced first (size-1 dims dropped, compatible dims merged); a copy that is
// then one contiguous run on both sides is a cudaMemcpyAsync, anything else a grid-stride kernel
// templated on the element size (1, 2, 4, 8 bytes).
//
// index: out-of-range indices are found by a small check kernel that raises FLX_KERR_INDEX_RANGE
// in the error record (only when outer > 0, as on the CPU, whose loops then never look at the
// index); SELECT writes 0 for them, ADD skips them. ADD is deterministic without atomics: each
// output element sums its source rows with j ascending. For short index vectors each output
// element scans the index directly; for long ones the (index, j) pairs are first sorted by a
// stable radix sort (CUB), so each output element walks only its own rows, still in ascending j.
// Accumulation in ADD is in the element type, rounding after every add exactly like the CPU,
// except for f16 and bf16: they accumulate in f32 and round once at the end (the CPU accumulates
// them in double; summing in 8 or 11 bits would lose small rows against large partial sums).
#include <cuda_runtime.h>
#include <stdint.h>

#include <cub/device/device_radix_sort.cuh>

#include "cuda_common.cuh"
#include "flx_kernels.h"

using flxk::kBlock;
using flxk::Space;

namespace {

// ---- copy -------------------------------------------------------------------------------------
template <typename E>
__global__ void copy_kernel(Space s, const E *in, int64_t in_off, E *out, int64_t out_off,
                            int64_t n) {
    int64_t stride = (int64_t)gridDim.x * blockDim.x;
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
        int64_t off[2];
        flxk::offsets<2>(s, i, off);
        out[out_off + off[1]] = in[in_off + off[0]];
    }
}

// ---- index ------------------------------------------------------------------------------------
template <typename I>
__global__ void index_check_kernel(const I *idx, int64_t n_idx, int64_t n_src, flx_kerr err) {
    int64_t stride = (int64_t)gridDim.x * blockDim.x;
    for (int64_t j = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; j < n_idx; j += stride) {
        int64_t t = (int64_t)idx[j];
        if (t < 0 || t >= n_src) flx_kerr_raise(err, FLX_KERR_INDEX_RANGE, t, 0, n_src, j);
    }
}

template <typename E, typename I>
__global__ void index_select_kernel(const E *src, const I *idx, E *out, int64_t n_src,
                                    int64_t n_idx, int64_t inner, int64_t total) {
    int64_t stride = (int64_t)gridDim.x * blockDim.x;
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < total; i += stride) {
        const flxk::Ori e = flxk::ori_of(i, n_idx, inner);
        int64_t t = (int64_t)idx[e.r];
        E v = 0;
        if (t >= 0 && t < n_src) v = src[(e.o * n_src + t) * inner + e.in];
        out[i] = v;
    }
}

// The running sum of ADD (compute_t<T>: f32 for the halves, else T itself).
template <typename T>
__device__ __forceinline__ flxk::compute_t<T> add_elem(flxk::compute_t<T> acc, T v) {
    return acc + flxk::to_c<T>(v);
}
template <> __device__ __forceinline__ uint8_t add_elem<uint8_t>(uint8_t a, uint8_t b) {
    return (uint8_t)((a + b) != 0); /* bool: the CPU stores (a + b) != 0 */
}

// ADD, direct scan: out(outer, n_src, inner)[o, t, in] = sum over j ascending with idx[j] == t.
template <typename T, typename I>
__global__ void index_add_scan_kernel(const T *src, const I *idx, T *out, int64_t n_src,
                                      int64_t n_idx, int64_t inner, int64_t total) {
    int64_t stride = (int64_t)gridDim.x * blockDim.x;
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < total; i += stride) {
        const flxk::Ori e = flxk::ori_of(i, n_src, inner);
        flxk::compute_t<T> acc = 0;
        const T *base = src + e.o * n_idx * inner + e.in;
        for (int64_t j = 0; j < n_idx; j++)
            if ((int64_t)idx[j] == e.r) acc = add_elem<T>(acc, base[j * inner]);
        out[i] = flxk::from_c<T>(acc);
    }
}

// ADD, sorted: keys[j] = idx[j] if valid else n_src (a sentinel past every row); vals[j] = j.
template <typename I>
__global__ void index_keys_kernel(const I *idx, int64_t n_idx, int64_t n_src, uint32_t *keys,
                                  uint32_t *vals) {
    int64_t stride = (int64_t)gridDim.x * blockDim.x;
    for (int64_t j = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; j < n_idx; j += stride) {
        int64_t t = (int64_t)idx[j];
        keys[j] = (uint32_t)((t >= 0 && t < n_src) ? t : n_src);
        vals[j] = (uint32_t)j;
    }
}

// seg[t] = first position p of the sorted keys with keys[p] >= t, for t in [0, n_src].
__global__ void index_segments_kernel(const uint32_t *keys, int64_t n_idx, int64_t n_src,
                                      uint32_t *seg) {
    int64_t stride = (int64_t)gridDim.x * blockDim.x;
    for (int64_t t = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; t <= n_src; t += stride) {
        int64_t lo = 0, hi = n_idx;
        while (lo < hi) {
            int64_t mid = lo + (hi - lo) / 2;
            if ((int64_t)keys[mid] < t) lo = mid + 1;
            else hi = mid;
        }
        seg[t] = (uint32_t)lo;
    }
}

template <typename T>
__global__ void index_add_sorted_kernel(const T *src, const uint32_t *rows, const uint32_t *seg,
                                        T *out, int64_t n_src, int64_t n_idx, int64_t inner,
                                        int64_t total) {
    int64_t stride = (int64_t)gridDim.x * blockDim.x;
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < total; i += stride) {
        const flxk::Ori e = flxk::ori_of(i, n_src, inner);
        flxk::compute_t<T> acc = 0;
        const T *base = src + e.o * n_idx * inner + e.in;
        uint32_t p1 = seg[e.r + 1];
        for (uint32_t p = seg[e.r]; p < p1; p++) acc = add_elem<T>(acc, base[(int64_t)rows[p] * inner]);
        out[i] = flxk::from_c<T>(acc);
    }
}

inline size_t align256(size_t x) { return (x + 255) & ~(size_t)255; }

template <typename T, typename I>
int index_add_scan(const flx_index_args *a, int64_t total, cudaStream_t st) {
    index_add_scan_kernel<T, I><<<flxk::grid_for(total), kBlock, 0, st>>>(
        (const T *)a->src, (const I *)a->idx, (T *)a->out, a->n_src, a->n_idx, a->inner, total);
    return flxk::launch_status();
}

template <typename T, typename I>
int index_add_sorted(const flx_index_args *a, int64_t total, const flx_cuda_lib_env *env) {
    cudaStream_t st = (cudaStream_t)env->stream;
    const I *idx = (const I *)a->idx;
    int n = (int)a->n_idx;
    int end_bit = 1;
    while (end_bit < 32 && ((uint64_t)a->n_src >> end_bit) != 0) end_bit++;
    size_t temp_bytes = 0;
    cudaError_t e = cub::DeviceRadixSort::SortPairs(nullptr, temp_bytes, (const uint32_t *)nullptr,
                                                    (uint32_t *)nullptr, (const uint32_t *)nullptr,
                                                    (uint32_t *)nullptr, n, 0, end_bit, st);
    if (e != cudaSuccess) return (int)e;
    size_t vec = align256((size_t)n * sizeof(uint32_t));
    size_t segb = align256((size_t)(a->n_src + 1) * sizeof(uint32_t));
    size_t bytes = 4 * vec + segb + align256(temp_bytes);
    char *ws = (char *)env->alloc(env->actx, bytes);
    if (!ws) return index_add_scan<T, I>(a, total, st); /* the scan needs no workspace */
    uint32_t *keys_in = (uint32_t *)ws, *keys_out = (uint32_t *)(ws + vec);
    uint32_t *vals_in = (uint32_t *)(ws + 2 * vec), *vals_out = (uint32_t *)(ws + 3 * vec);
    uint32_t *seg = (uint32_t *)(ws + 4 * vec);
    void *temp = ws + 4 * vec + segb;
    int rc = 0;
    index_keys_kernel<I><<<flxk::grid_for(n), kBlock, 0, st>>>(idx, n, a->n_src, keys_in, vals_in);
    rc = flxk::launch_status();
    if (rc == 0) {
        e = cub::DeviceRadixSort::SortPairs(temp, temp_bytes, keys_in, keys_out, vals_in, vals_out, n,
                                            0, end_bit, st);
        rc = (int)e;
    }
    if (rc == 0) {
        index_segments_kernel<<<flxk::grid_for(a->n_src + 1), kBlock, 0, st>>>(keys_out, n, a->n_src,
                                                                              seg);
        rc = flxk::launch_status();
    }
    if (rc == 0) {
        index_add_sorted_kernel<T><<<flxk::grid_for(total), kBlock, 0, st>>>(
            (const T *)a->src, vals_out, seg, (T *)a->out, a->n_src, a->n_idx, a->inner, total);
        rc = flxk::launch_status();
    }
    env->free(env->actx, ws); /* stream-ordered: after the kernels above */
    return rc;
}

template <typename T, typename I>
int index_add(const flx_index_args *a, int64_t total, const flx_cuda_lib_env *env) {
    /* A scan costs n_idx per output element; sorting pays off beyond a few dozen indices. */
    bool sort = a->n_idx > 32 && a->n_idx <= (int64_t)INT32_MAX && a->n_src < (int64_t)UINT32_MAX - 1;
    if (sort) return index_add_sorted<T, I>(a, total, env);
    return index_add_scan<T, I>(a, total, (cudaStream_t)env->stream);
}

template <typename I>
int index_launch(const flx_index_args *a, const flx_cuda_lib_env *env) {
    cudaStream_t st = (cudaStream_t)env->stream;
    const I *idx = (const I *)a->idx;
    if (a->outer > 0 && a->n_idx > 0) {
        index_check_kernel<I><<<flxk::grid_for(a->n_idx), kBlock, 0, st>>>(idx, a->n_idx, a->n_src,
                                                                         a->err);
        int rc = flxk::launch_status();
        if (rc) return rc;
    }
    if (a->mode == FLX_INDEX_SELECT) {
        int64_t total = a->outer * a->n_idx * a->inner;
        if (total <= 0) return 0;
        return flxk::with_size(flx_dtype_size(a->dtype), [&](auto t) {
            using E = typename decltype(t)::type;
            index_select_kernel<E, I><<<flxk::grid_for(total), kBlock, 0, st>>>(
                (const E *)a->src, idx, (E *)a->out, a->n_src, a->n_idx, a->inner, total);
            return flxk::launch_status();
        });
    }
    if (a->mode != FLX_INDEX_ADD) return (int)cudaErrorInvalidValue;
    int64_t total = a->outer * a->n_src * a->inner;
    if (total <= 0) return 0;
    return flxk::with_dtype<flxk::kAny>(a->dtype, [&](auto t) {
        return index_add<typename decltype(t)::type, I>(a, total, env);
    });
}

} // namespace

extern "C" int flx_cuda_copy(const flx_copy_args *a, void *stream) {
    Space s;
    const int64_t n = flxk::space_of(s, a->ndim, a->shape, {a->in_strides, a->out_strides});
    if (n <= 0) return n < 0 ? (int)cudaErrorInvalidValue : 0;
    cudaStream_t st = (cudaStream_t)stream;
    size_t es = a->elem_size;
    if (s.ndim == 1 && (s.shape[0] == 1 || (s.st[0][0] == 1 && s.st[1][0] == 1))) {
        const char *src = (const char *)a->in + (size_t)a->in_off * es;
        char *dst = (char *)a->out + (size_t)a->out_off * es;
        return (int)cudaMemcpyAsync(dst, src, (size_t)n * es, cudaMemcpyDeviceToDevice, st);
    }
    return flxk::with_size(es, [&](auto t) {
        using E = typename decltype(t)::type;
        copy_kernel<E><<<flxk::grid_for(n), kBlock, 0, st>>>(s, (const E *)a->in, a->in_off, (E *)a->out,
                                                             a->out_off, n);
        return flxk::launch_status();
    });
}

extern "C" int flx_cuda_index(const flx_index_args *a, const flx_cuda_lib_env *env) {
    if (a->outer < 0 || a->n_src < 0 || a->n_idx < 0 || a->inner < 0) return (int)cudaErrorInvalidValue;
    switch (a->idx_dtype) {
    case FLX_I32: return index_launch<int32_t>(a, env);
    case FLX_I64: return index_launch<int64_t>(a, env);
    default: return (int)cudaErrorInvalidValue;
    }
}
