// attention.cu — CUDA kernels of the attention family: the generic path (every dtype, every head
// dim) and the launcher, which sends bf16/f16 at head dims 64 and 128 to the tensor-core kernels
// of attention_tc.cu. Notation and the shared parameter block: attention.cuh. Semantics are those
// of the CPU reference (runtime/cpu/attention.c); only the summation order differs.
//
// Generic path: one warp per row (a query row for FWD, JVP and dQ; a key row for dK/dV), 4 warps
// a block, keys (or queries) in chunks of 32, one per lane. A lane forms its key's score with a
// dot product over D (the query in shared memory, broadcast; the key row read through L1), the
// warp combines the chunk into the running (max, sum) of the online softmax, and then every lane
// accumulates its own output columns (lane, lane + 32, ...) over the chunk's keys, reading the
// chunk's probabilities from shared memory. Accumulators live in shared memory (a warp's own
// slice, so any D works: D + Dv values a warp for FWD). Accumulation is in f32 (f64 for f64), exp
// and log are the accurate expf/logf. Nothing S x T is ever stored.
//
// Backward (both paths): Delta_i = dO_i . O_i, P_ij = exp(s q_i . k_j - L_i), dP_ij = dO_i . v_j,
// dS_ij = P_ij (dP_ij - Delta_i); dQ_i = s sum_j dS_ij k_j, dK_j = s sum_i dS_ij q_i,
// dV_j = sum_i P_ij dO_i. dQ is a separate pass, not atomics: one kernel walks query rows
// (Delta and dQ), a second walks key rows (dK and dV, reading Delta), so results are
// deterministic; the price is recomputing P and dP once more (7 products of the forward's size
// instead of 5).
//
// JVP (forward mode), one pass. With tangents dq, dk, dv:
//   dS_ij = s (dq_i . k_j + q_i . dk_j), and the softmax JVP dP_ij = P_ij (dS_ij - r_i) with
//   r_i = sum_j P_ij dS_ij, so
//   dO_i = sum_j dP_ij v_j + sum_j P_ij dv_j = sum_j P_ij (dS_ij v_j + dv_j) - r_i O_i.
// Every sum is a P-weighted sum, so it is carried online exactly like O: with the running max m
// and p~_ij = exp(s q_i . k_j - m), keep l = sum p~, a = sum p~ v_j, b = sum p~ (dS_ij v_j + dv_j)
// and c = sum p~ dS_ij; when m grows to m' all four are multiplied by exp(m - m') (they share the
// factor exp(-m)). At the end O = a / l, r = c / l and dO = b / l - r O. The r term cannot be
// folded in before the end (it needs the whole row), but it needs no second pass: O and r are
// both known when the row is done.
#include <cuda_runtime.h>
#include <math.h>
#include <stdint.h>

#include "attention.cuh"
#include "cuda_common.cuh"
#include "flx_kernels.h"

namespace flxk {
namespace attn {
namespace {

constexpr int kWarps = 4; // warps (rows) per block of the generic kernels
constexpr unsigned kFull = 0xffffffffu;

__device__ __forceinline__ float ex(float v) { return expf(v); }
__device__ __forceinline__ double ex(double v) { return exp(v); }
__device__ __forceinline__ float lg(float v) { return logf(v); }
__device__ __forceinline__ double lg(double v) { return log(v); }

template <typename A> __device__ __forceinline__ A warp_sum(A v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(kFull, v, o);
    return v;
}
template <typename A> __device__ __forceinline__ A warp_max(A v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = fmax(v, __shfl_xor_sync(kFull, v, o));
    return v;
}

// Copies n elements of a row into the warp's shared slice (as A).
template <typename T, typename A>
__device__ __forceinline__ void row_to_smem(A *dst, const T *src, int n, int lane) {
    for (int c = lane; c < n; c += 32) dst[c] = (A)to_c(src[c]);
}

template <typename T, typename A>
__device__ __forceinline__ A dot(const A *x, const T *y, int n) {
    A s = 0;
    for (int c = 0; c < n; c++) s += x[c] * (A)to_c(y[c]);
    return s;
}

// Keys query i sees: [0, kend).
__device__ __forceinline__ int key_end(const Params &p, int i) {
    if (!p.causal) return p.T;
    int64_t e = (int64_t)i + (p.T - p.S) + 1;
    return e < 0 ? 0 : (e > p.T ? p.T : (int)e);
}

// Each warp's accumulators: a slice of the block's dynamic shared memory (double-aligned).
extern __shared__ double smem_d[];
template <typename A> __device__ __forceinline__ A *warp_slice(int warp, int slice) {
    return (A *)smem_d + (int64_t)warp * slice;
}

// Shared floats per warp of each generic kernel.
template <bool JVP> __host__ __device__ constexpr int fwd_slice(int D, int Dv) {
    return JVP ? 2 * D + 2 * Dv + 64 : D + Dv + 32;
}
__host__ __device__ constexpr int bwd_slice(int D, int Dv) { return 2 * D + 2 * Dv + 64; }

// ---- forward and JVP: one warp per query row --------------------------------------------------
// Shared slice (JVP adds the bracketed parts): q[D] [dq[D]] acc[Dv] [tacc[Dv]] p[32] [ds[32]].
template <typename T, bool JVP> __global__ void __launch_bounds__(kWarps * 32) k_rows_fwd(const Params p) {
    using A = acc_t<T>;
    WarpRow w;
    if (!warp_row<kWarps>(p, p.S, w)) return;
    const int warp = w.warp, lane = w.lane, i = w.r, b = w.b, h = w.h, D = p.D, Dv = p.Dv;
    A *sq = warp_slice<A>(warp, fwd_slice<JVP>(D, Dv));
    A *sdq = sq + D;                      // JVP only
    A *acc = JVP ? sdq + D : sq + D;
    A *tacc = acc + Dv;                   // JVP only
    A *sp = JVP ? tacc + Dv : acc + Dv;
    A *sds = sp + 32;                     // JVP only
    const A scale = (A)p.scale;

    // JVP: a NULL tangent is zero; the flags are uniform, so the branches cost nothing.
    const bool has_tq = JVP && p.dq.p, has_tk = JVP && p.dk.p, has_tv = JVP && p.dv.p;
    row_to_smem<T, A>(sq, at<T>(p.q, b, h, i), D, lane);
    if (has_tq) row_to_smem<T, A>(sdq, at<T>(p.dq, b, h, i), D, lane);
    for (int c = lane; c < Dv; c += 32) {
        acc[c] = 0;
        if constexpr (JVP) tacc[c] = 0;
    }
    __syncwarp();

    const int kend = key_end(p, i);
    A m = -(A)INFINITY, l = 0, r = 0;
    for (int j0 = 0; j0 < kend; j0 += 32) {
        const int j = j0 + lane, n = min(32, kend - j0);
        A sc = -(A)INFINITY, ds = 0;
        if (j < kend) {
            const T *kj = at<T>(p.k, b, h, j);
            sc = scale * dot<T, A>(sq, kj, D);
            if constexpr (JVP) {
                A t = 0;
                if (has_tq) t += dot<T, A>(sdq, kj, D);
                if (has_tk) t += dot<T, A>(sq, at<T>(p.dk, b, h, j), D);
                ds = scale * t;
            }
        }
        const A mn = fmax(m, warp_max(sc)); // finite: the chunk has a key (scores are finite or NaN)
        const A corr = ex(m - mn);          // m = -inf on the first chunk: 0
        const A pj = j < kend ? ex(sc - mn) : (A)0;
        l = l * corr + warp_sum(pj);
        if constexpr (JVP) r = r * corr + warp_sum(pj * ds);
        m = mn;
        sp[lane] = pj;
        if constexpr (JVP) sds[lane] = ds;
        __syncwarp();
        for (int c = lane; c < Dv; c += 32) {
            A a = acc[c] * corr, t = 0;
            if constexpr (JVP) t = tacc[c] * corr;
            for (int jj = 0; jj < n; jj++) {
                const A vv = (A)to_c(at<T>(p.v, b, h, j0 + jj)[c]);
                a += sp[jj] * vv;
                if constexpr (JVP) {
                    const A tv = has_tv ? (A)to_c(at<T>(p.dv, b, h, j0 + jj)[c]) : (A)0;
                    t += sp[jj] * (sds[jj] * vv + tv);
                }
            }
            acc[c] = a;
            if constexpr (JVP) tacc[c] = t;
        }
        __syncwarp(); // sp / sds are rewritten by the next chunk
    }
    // A row that sees no key: l = 0, output 0, L = -inf.
    const A inv = l > 0 ? (A)1 / l : (A)0;
    const A rr = r * inv;
    T *o = p.o.p ? at_w<T>(p.o, b, h, i) : nullptr; // JVP may skip the primal output
    T *to = JVP ? at_w<T>(p.dout, b, h, i) : nullptr;
    for (int c = lane; c < Dv; c += 32) {
        const A oc = acc[c] * inv;
        if (o) o[c] = from_c<T>(oc);
        if constexpr (JVP) to[c] = from_c<T>(tacc[c] * inv - rr * oc);
    }
    if (lane == 0 && p.stats) ((A *)p.stats)[w.row] = l > 0 ? m + lg(l) : -(A)INFINITY;
}

// ---- backward, pass 1: one warp per query row: Delta_i and dQ_i --------------------------------
// Shared slice: q[D] dO[Dv] dq[D] ds[32] (the rest of bwd_slice unused).
template <typename T> __global__ void __launch_bounds__(kWarps * 32) k_bwd_rows(const Params p) {
    using A = acc_t<T>;
    WarpRow w;
    if (!warp_row<kWarps>(p, p.S, w)) return;
    const int warp = w.warp, lane = w.lane, i = w.r, b = w.b, h = w.h, D = p.D, Dv = p.Dv;
    A *sq = warp_slice<A>(warp, bwd_slice(D, Dv)), *sdo = sq + D, *dq = sdo + Dv, *sds = dq + D;
    const A scale = (A)p.scale;

    row_to_smem<T, A>(sq, at<T>(p.q, b, h, i), D, lane);
    row_to_smem<T, A>(sdo, at<T>(p.dout, b, h, i), Dv, lane);
    for (int c = lane; c < D; c += 32) dq[c] = 0;
    __syncwarp();
    A delta = 0;
    const T *o = at<T>(p.o, b, h, i);
    for (int c = lane; c < Dv; c += 32) delta += sdo[c] * (A)to_c(o[c]);
    delta = warp_sum(delta);
    if (lane == 0) ((A *)p.delta)[w.row] = delta;

    if (!p.dq.p) return; // only Delta wanted
    const A L = ((const A *)p.stats)[w.row];
    const int kend = L == -(A)INFINITY ? 0 : key_end(p, i);
    for (int j0 = 0; j0 < kend; j0 += 32) {
        const int j = j0 + lane, n = min(32, kend - j0);
        A ds = 0;
        if (j < kend) {
            const A pr = ex(scale * dot<T, A>(sq, at<T>(p.k, b, h, j), D) - L);
            ds = pr * (dot<T, A>(sdo, at<T>(p.v, b, h, j), Dv) - delta);
        }
        sds[lane] = ds;
        __syncwarp();
        for (int c = lane; c < D; c += 32) {
            A a = dq[c];
            for (int jj = 0; jj < n; jj++) a += sds[jj] * (A)to_c(at<T>(p.k, b, h, j0 + jj)[c]);
            dq[c] = a;
        }
        __syncwarp();
    }
    T *g = at_w<T>(p.dq, b, h, i);
    for (int c = lane; c < D; c += 32) g[c] = from_c<T>(scale * dq[c]);
}

// ---- backward, pass 2: one warp per key row: dK_j and dV_j -------------------------------------
// Shared slice: k[D] v[Dv] dk[D] dv[Dv] p[32] ds[32].
template <typename T> __global__ void __launch_bounds__(kWarps * 32) k_bwd_cols(const Params p) {
    using A = acc_t<T>;
    WarpRow w;
    if (!warp_row<kWarps>(p, p.T, w)) return;
    const int warp = w.warp, lane = w.lane, j = w.r, b = w.b, h = w.h, D = p.D, Dv = p.Dv;
    A *sk = warp_slice<A>(warp, bwd_slice(D, Dv)), *sv = sk + D, *dk = sv + Dv, *dv = dk + D;
    A *sp = dv + Dv, *sds = sp + 32;
    const A scale = (A)p.scale;

    row_to_smem<T, A>(sk, at<T>(p.k, b, h, j), D, lane);
    row_to_smem<T, A>(sv, at<T>(p.v, b, h, j), Dv, lane);
    for (int c = lane; c < D; c += 32) dk[c] = 0;
    for (int c = lane; c < Dv; c += 32) dv[c] = 0;
    __syncwarp();
    // Queries that see key j: i >= j - off when causal.
    int64_t i_lo = p.causal ? (int64_t)j - (p.T - p.S) : 0;
    if (i_lo < 0) i_lo = 0;
    const A *Ls = (const A *)p.stats + w.bh * p.S;
    const A *Dl = (const A *)p.delta + w.bh * p.S;
    for (int64_t i0 = i_lo; i0 < p.S; i0 += 32) {
        const int64_t i = i0 + lane;
        const int n = (int)min((int64_t)32, p.S - i0);
        A pr = 0, ds = 0;
        if (i < p.S) {
            const A L = Ls[i];
            if (L != -(A)INFINITY) {
                pr = ex(scale * dot<T, A>(sk, at<T>(p.q, b, h, i), D) - L);
                ds = pr * (dot<T, A>(sv, at<T>(p.dout, b, h, i), Dv) - Dl[i]);
            }
        }
        sp[lane] = pr;
        sds[lane] = ds;
        __syncwarp();
        // The chunk's rows, walked by their row stride (one 64-bit base per operand).
        const T *dob = at<T>(p.dout, b, h, i0), *qb = at<T>(p.q, b, h, i0);
        for (int c = lane; c < Dv; c += 32) {
            A a = dv[c];
            for (int ii = 0; ii < n; ii++) a += sp[ii] * (A)to_c(dob[ii * p.dout.sr + c]);
            dv[c] = a;
        }
        for (int c = lane; c < D; c += 32) {
            A a = dk[c];
            for (int ii = 0; ii < n; ii++) a += sds[ii] * (A)to_c(qb[ii * p.q.sr + c]);
            dk[c] = a;
        }
        __syncwarp();
    }
    T *gk = at_w<T>(p.dk, b, h, j), *gv = at_w<T>(p.dv, b, h, j);
    for (int c = lane; c < D; c += 32) gk[c] = from_c<T>(scale * dk[c]);
    for (int c = lane; c < Dv; c += 32) gv[c] = from_c<T>(dv[c]);
}

// Launches kern over `rows` rows (kWarps a block) with `slice` accumulators a warp.
template <typename A, typename K>
int launch_rows(K kern, int64_t rows, int slice, const Params &p, cudaStream_t st) {
    if (rows <= 0) return 0;
    const size_t smem = (size_t)kWarps * (size_t)slice * sizeof(A);
    if (smem > 48 * 1024) {
        int dev = 0, optin = 0;
        if (cudaGetDevice(&dev) != cudaSuccess ||
            cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev) != cudaSuccess)
            return (int)cudaGetLastError();
        if (smem > (size_t)optin) return (int)cudaErrorInvalidValue; // head dims past ~3000 (f64)
        // The device's limit (the kernels have no static shared memory), not this launch's size:
        // the setting is the kernel's, shared by every thread, and a smaller one set by another
        // thread between ours and our launch would make the launch fail.
        cudaError_t e = cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, optin);
        if (e != cudaSuccess) return (int)e;
    }
    const int64_t blocks = (rows + kWarps - 1) / kWarps;
    if (blocks > INT32_MAX) return (int)cudaErrorInvalidConfiguration;
    kern<<<(unsigned)blocks, kWarps * 32, smem, st>>>(p);
    return launch_status();
}

template <typename T> int generic(int mode, const Params &p, cudaStream_t st) {
    using A = acc_t<T>;
    const int64_t q_rows = (int64_t)p.B * p.H * p.S, k_rows = (int64_t)p.B * p.H * p.T;
    if (mode == kFwd)
        return launch_rows<A>(k_rows_fwd<T, false>, q_rows, fwd_slice<false>(p.D, p.Dv), p, st);
    if (mode == kJvp)
        return launch_rows<A>(k_rows_fwd<T, true>, q_rows, fwd_slice<true>(p.D, p.Dv), p, st);
    int rc = launch_rows<A>(k_bwd_rows<T>, q_rows, bwd_slice(p.D, p.Dv), p, st);
    if (rc || !p.dk.p) return rc;
    return launch_rows<A>(k_bwd_cols<T>, k_rows, bwd_slice(p.D, p.Dv), p, st);
}

} // namespace

// One mode on the tensor-core path when it takes the problem, else on the generic one.
int run(int mode, int dt, const Params &p, cudaStream_t st) {
    if (tc_supported(p, dt)) {
        if (mode == kFwd) return tc_forward(p, dt, st);
        if (mode == kJvp) return tc_jvp(p, dt, st);
        return tc_backward(p, dt, st);
    }
    return with_dtype<kFloat>(dt, [&](auto t) { return generic<typename decltype(t)::type>(mode, p, st); });
}

} // namespace attn
} // namespace flxk

namespace {

flxk::attn::Ten ten(const void *p, const flx_attention_strides &st) {
    flxk::attn::Ten t;
    t.p = p;
    t.sb = st.b;
    t.sh = st.h;
    t.sr = st.r;
    return t;
}

} // namespace

// Queues one mode (flx_attention_args in flx_kernels.h). Scratch: none beyond args->delta.
extern "C" int flx_cuda_attention(const flx_attention_args *a, const flx_cuda_lib_env *env) {
    using flxk::attn::Params;
    if (!a || !env) return (int)cudaErrorInvalidValue;
    const int64_t lim = INT32_MAX;
    if (a->B < 0 || a->H < 0 || a->S < 0 || a->T < 0 || a->D < 0 || a->Dv < 0 || a->B > lim ||
        a->H > lim || a->S > lim || a->T > lim || a->D > lim || a->Dv > lim || a->B * a->H > lim)
        return (int)cudaErrorInvalidValue;
    Params p;
    p.B = (int)a->B;
    p.H = (int)a->H;
    p.S = (int)a->S;
    p.T = (int)a->T;
    p.D = (int)a->D;
    p.Dv = (int)a->Dv;
    p.causal = a->causal ? 1 : 0;
    p.scale = a->scale;
    p.q = ten(a->q, a->sq);
    p.k = ten(a->k, a->sk);
    p.v = ten(a->v, a->sv);
    p.stats = a->lse;
    p.delta = a->delta;
    int mode;
    switch (a->mode) {
    case FLX_ATTENTION_FWD:
        mode = flxk::attn::kFwd;
        p.o = ten(a->o, a->so);
        p.dout = ten(nullptr, a->sdout);
        p.dq = ten(nullptr, a->sdq);
        p.dk = ten(nullptr, a->sdk);
        p.dv = ten(nullptr, a->sdv);
        break;
    case FLX_ATTENTION_BWD:
        mode = flxk::attn::kBwd;
        if (!a->o || !a->lse || !a->dout || !a->delta || (!a->dk) != (!a->dv)) return (int)cudaErrorInvalidValue;
        p.o = ten(a->o, a->so);
        p.dout = ten(a->dout, a->sdout);
        p.dq = ten(a->dq, a->sdq);
        p.dk = ten(a->dk, a->sdk);
        p.dv = ten(a->dv, a->sdv);
        break;
    case FLX_ATTENTION_JVP:
        mode = flxk::attn::kJvp;
        if (!a->tout) return (int)cudaErrorInvalidValue;
        p.o = ten(nullptr, a->so); // the primal output is not wanted
        p.stats = nullptr;
        p.dout = ten(a->tout, a->stout);
        p.dq = ten(a->tq, a->stq);
        p.dk = ten(a->tk, a->stk);
        p.dv = ten(a->tv, a->stv);
        break;
    default: return (int)cudaErrorInvalidValue;
    }
    return flxk::attn::run(mode, (int)a->dtype, p, (cudaStream_t)env->stream);
}
