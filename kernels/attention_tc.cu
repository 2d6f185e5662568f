// attention_tc.cu — the tensor-core attention kernels: bf16/f16 inputs, head dims D = Dv = 64 or
// 128, f32 accumulation on mma.sync.m16n8k16 (sm_80+; on sm_90 the same instruction runs on
// Hopper's tensor cores at about 60-70 % of what wgmma reaches, but it is simple enough to be
// sure of without a GPU at hand). Notation: attention.cuh; formulas: attention.cu.
//
// Layout shared by every kernel: 4 warps a block, each owning 16 rows of the block's tile (64
// query rows, or 64 key rows for dK/dV). Tiles are staged in shared memory with rows padded to
// D + 8 elements (so the 8 rows an mma fragment load touches fall in 8 different bank groups),
// loaded by cp.async into two buffers (the next key or query tile streams in while the current
// one is multiplied). Fragment layouts of m16n8k16 (g = lane / 4, t = lane % 4):
//   A (16 x 16, row-major): a0 = (g, 2t..2t+1), a1 = (g+8, 2t..), a2 = (g, 2t+8..), a3 = (g+8, 2t+8..)
//   B (16 x 8, k-major):    b0 = (k 2t..2t+1, n g), b1 = (k 2t+8.., n g)
//   C (16 x 8, f32):        c0, c1 = (g, 2t..2t+1), c2, c3 = (g+8, 2t..2t+1)
// so a C tile pair (n 16c..16c+15) is exactly an A fragment (k 16c..16c+15): probabilities go from
// the score accumulators to the next product's A operand without touching shared memory (FA2).
// A B operand whose k runs along the smem rows (V in P V, K in dS K, Q and dO in the dK/dV
// products) is loaded with ldmatrix.trans; one whose k runs along D (K in Q K^T) with 32-bit loads.
//
// Forward: grid (query tiles, B H), the heaviest causal tiles first; a block walks the key tiles
// its rows can see (causal: fully masked tiles are never loaded), online softmax in the log2
// domain (exp2f of s log2(e) x - m), P rounded to the input dtype for P V (as FlashAttention).
// JVP: the forward plus dS = s (dQ K^T + Q dK^T), P dV and (P o dS) V: 6 products of the forward's
// size against 2, so about a third of the forward's speed.
// Backward: Delta kernel, then a dQ kernel (grid over query tiles, walking key tiles) and a dK/dV
// kernel (grid over key tiles, walking query tiles); no atomics, deterministic.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <math.h>
#include <stdint.h>

#include <type_traits>

#include "attention.cuh"
#include "cuda_common.cuh"
#include "flx_kernels.h"

namespace flxk {
namespace attn {
namespace {

constexpr int kThreads = 128;
constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;

extern __shared__ __align__(16) unsigned char smem_tc[];

// ---- tensor-core and memory primitives --------------------------------------------------------
// m16n8k16 with f32 accumulators for the two input types (T = __nv_bfloat16 or __half): run
// does c += a b; pack rounds two values to T (to nearest even) as one register, the first in the
// low half (the lower column of a fragment).
#define FLX_MMA_16816(TY)                                                                          \
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32." TY "." TY ".f32 {%0,%1,%2,%3}, "         \
                 "{%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"                                        \
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])                                  \
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1))
template <typename T> struct Mma {
    static constexpr bool kHalf = std::is_same<T, __half>::value;
    static_assert(kHalf || std::is_same<T, __nv_bfloat16>::value, "tensor-core inputs are bf16 or f16");
    static __device__ __forceinline__ void run(float c[4], const uint32_t a[4], uint32_t b0, uint32_t b1) {
        if constexpr (kHalf) FLX_MMA_16816("f16");
        else FLX_MMA_16816("bf16");
    }
    static __device__ __forceinline__ uint32_t pack(float lo, float hi) {
        if constexpr (kHalf) {
            __half2 v = __floats2half2_rn(lo, hi);
            return *reinterpret_cast<uint32_t *>(&v);
        } else {
            __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
            return *reinterpret_cast<uint32_t *>(&v);
        }
    }
};
#undef FLX_MMA_16816

template <typename T> __device__ __forceinline__ uint32_t lds32(const T *p) {
    return *reinterpret_cast<const uint32_t *>(p);
}

// Four 8x8 b16 matrices, transposed: lanes 8m..8m+7 give the row addresses of matrix m; register
// m then holds (row 2t..2t+1, column g) of matrix m.
__device__ __forceinline__ void ldsm_x4_t(uint32_t r[4], const void *p) {
    const uint32_t a = (uint32_t)__cvta_generic_to_shared(p);
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(a));
}

// 16 bytes global -> shared, asynchronously; pred false writes zeros and reads nothing.
__device__ __forceinline__ void cp_async16(void *s, const void *g, bool pred) {
    const uint32_t a = (uint32_t)__cvta_generic_to_shared(s);
    const int n = pred ? 16 : 0;
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(a), "l"(g), "r"(n));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
__device__ __forceinline__ void cp_async_wait_all() { asm volatile("cp.async.wait_group 0;\n" ::); }

// Rows [r0, r0 + R) of x (zeros past nrows) into s, rows padded to D + 8 elements.
template <typename T, int R, int D>
__device__ __forceinline__ void tile_async(T *s, const Ten &x, int b, int h, int r0, int nrows) {
    constexpr int CH = D / 8; // 16-byte chunks a row
    const T *base = at<T>(x, b, h, 0);
    for (int c = threadIdx.x; c < R * CH; c += kThreads) {
        const int r = c / CH, col = (c % CH) * 8;
        const bool ok = r0 + r < nrows;
        cp_async16(s + r * (D + 8) + col, ok ? base + (int64_t)(r0 + r) * x.sr + col : base, ok);
    }
}

// The A fragment (16 x 16 at column k0) of the warp's 16 rows of a padded smem tile.
template <typename T, int LD>
__device__ __forceinline__ void frag_a(uint32_t a[4], const T *s, int k0, int g, int t) {
    a[0] = lds32(s + g * LD + k0 + 2 * t);
    a[1] = lds32(s + (g + 8) * LD + k0 + 2 * t);
    a[2] = lds32(s + g * LD + k0 + 2 * t + 8);
    a[3] = lds32(s + (g + 8) * LD + k0 + 2 * t + 8);
}

// acc[NT][4] (+)= A(16 rows of sa, all of D) x B^T where B's rows are NT*8 rows of sb (k along D).
template <typename T, int D, int NT>
__device__ __forceinline__ void mma_abt(float (&acc)[NT][4], const T *sa, const T *sb, int g, int t) {
    constexpr int LD = D + 8;
#pragma unroll
    for (int kc = 0; kc < D / 16; kc++) {
        uint32_t a[4];
        frag_a<T, LD>(a, sa, kc * 16, g, t);
#pragma unroll
        for (int nt = 0; nt < NT; nt++) {
            const T *r = sb + (nt * 8 + g) * LD + kc * 16 + 2 * t;
            Mma<T>::run(acc[nt], a, lds32(r), lds32(r + 8));
        }
    }
}

// acc[D/8][4] += P x B where P (16 x K) is given as C tiles pc[K/8][4] (rounded to T here) and B
// (K x D) is rows [0, K) of the padded smem tile sb (k along the rows: ldmatrix.trans).
template <typename T, int D, int K>
__device__ __forceinline__ void mma_pb(float (&acc)[D / 8][4], const float (&pc)[K / 8][4], const T *sb,
                                       int lane) {
    constexpr int LD = D + 8;
#pragma unroll
    for (int kc = 0; kc < K / 16; kc++) {
        uint32_t a[4];
        a[0] = Mma<T>::pack(pc[2 * kc][0], pc[2 * kc][1]);
        a[1] = Mma<T>::pack(pc[2 * kc][2], pc[2 * kc][3]);
        a[2] = Mma<T>::pack(pc[2 * kc + 1][0], pc[2 * kc + 1][1]);
        a[3] = Mma<T>::pack(pc[2 * kc + 1][2], pc[2 * kc + 1][3]);
        const T *rowp = sb + (kc * 16 + (lane & 7) + ((lane >> 3) & 1) * 8) * LD + (lane >> 4) * 8;
#pragma unroll
        for (int nd = 0; nd < D / 8; nd += 2) {
            uint32_t bf[4];
            ldsm_x4_t(bf, rowp + nd * 8);
            Mma<T>::run(acc[nd], a, bf[0], bf[1]);
            Mma<T>::run(acc[nd + 1], a, bf[2], bf[3]);
        }
    }
}

__device__ __forceinline__ float quad_max(float v) {
    v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 1));
    return fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 2));
}
__device__ __forceinline__ float quad_sum(float v) {
    v += __shfl_xor_sync(0xffffffffu, v, 1);
    return v + __shfl_xor_sync(0xffffffffu, v, 2);
}

// Stores rows (row0 + g, row0 + g + 8) of the warp's C tiles acc[D/8][4] * mul[half] to x; rows
// at or past nrows are skipped. mul = 0 writes zeros.
template <typename T, int D>
__device__ __forceinline__ void store_rows(const Ten &x, int b, int h, int row0, int nrows,
                                           const float (&acc)[D / 8][4], const float mul[2], int g, int t) {
#pragma unroll
    for (int hf = 0; hf < 2; hf++) {
        const int r = row0 + g + hf * 8;
        if (r >= nrows) continue;
        T *dst = at_w<T>(x, b, h, r) + 2 * t;
#pragma unroll
        for (int nd = 0; nd < D / 8; nd++)
            *reinterpret_cast<uint32_t *>(dst + nd * 8) =
                Mma<T>::pack(acc[nd][2 * hf] * mul[hf], acc[nd][2 * hf + 1] * mul[hf]);
    }
}

// Keys the query tile [q0, q0 + 64) can see: [0, kend).
__device__ __forceinline__ int tile_key_end(const Params &p, int q0) {
    if (!p.causal) return p.T;
    const int64_t e = (int64_t)q0 + 64 + (p.T - p.S);
    return e < 0 ? 0 : (e > p.T ? p.T : (int)e);
}

// ---- forward (JVP = false) and forward-mode JVP (JVP = true) --------------------------------
// Shared: Q [dQ] (64 x LD), then two buffers of K V [dK dV] (BC x LD each).
template <typename T, int D, int BC, bool JVP>
__global__ void __launch_bounds__(kThreads) k_fwd_tc(const Params p) {
    constexpr int BR = 64, LD = D + 8, ND = D / 8, NT = BC / 8, NKV = JVP ? 4 : 2;
    T *sQ = reinterpret_cast<T *>(smem_tc);
    T *sdQ = sQ + BR * LD;
    T *sKV = sQ + (JVP ? 2 : 1) * BR * LD;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    const int qt = gridDim.x - 1 - blockIdx.x;
    const int bh = blockIdx.y, b = bh / p.H, h = bh % p.H;
    const int q0 = qt * BR, off = p.T - p.S, rw = q0 + warp * 16;
    const int kend = tile_key_end(p, q0);
    // JVP: a NULL tangent is zero (its loads and products are skipped; block-uniform flags).
    const bool has_tq = JVP && p.dq.p, has_tk = JVP && p.dk.p, has_tv = JVP && p.dv.p;

    float oacc[ND][4], tacc[JVP ? ND : 1][4];
#pragma unroll
    for (int nd = 0; nd < ND; nd++)
#pragma unroll
        for (int c = 0; c < 4; c++) {
            oacc[nd][c] = 0.f;
            if constexpr (JVP) tacc[nd][c] = 0.f;
        }
    float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.f, 0.f}, rs[2] = {0.f, 0.f};
    const float sl2 = (float)p.scale * kLog2e, sc = (float)p.scale;

    if (kend > 0) {
        tile_async<T, BR, D>(sQ, p.q, b, h, q0, p.S);
        if (has_tq) tile_async<T, BR, D>(sdQ, p.dq, b, h, q0, p.S);
        auto load_kv = [&](int kt) {
            T *buf = sKV + (kt & 1) * NKV * BC * LD;
            tile_async<T, BC, D>(buf, p.k, b, h, kt * BC, p.T);
            tile_async<T, BC, D>(buf + BC * LD, p.v, b, h, kt * BC, p.T);
            if (has_tk) tile_async<T, BC, D>(buf + 2 * BC * LD, p.dk, b, h, kt * BC, p.T);
            if (has_tv) tile_async<T, BC, D>(buf + 3 * BC * LD, p.dv, b, h, kt * BC, p.T);
        };
        load_kv(0);
        cp_async_commit();
        const int nkt = (kend + BC - 1) / BC;
        for (int kt = 0; kt < nkt; kt++) {
            cp_async_wait_all();
            __syncthreads(); // tile kt landed; every warp is done with buffer (kt + 1) & 1
            if (kt + 1 < nkt) load_kv(kt + 1);
            cp_async_commit();
            const T *sK = sKV + (kt & 1) * NKV * BC * LD, *sV = sK + BC * LD;
            const T *sQw = sQ + warp * 16 * LD;

            float s[NT][4], ds[JVP ? NT : 1][4];
#pragma unroll
            for (int nt = 0; nt < NT; nt++)
#pragma unroll
                for (int c = 0; c < 4; c++) {
                    s[nt][c] = 0.f;
                    if constexpr (JVP) ds[nt][c] = 0.f;
                }
            mma_abt<T, D, NT>(s, sQw, sK, g, t);
            if constexpr (JVP) {
                if (has_tq) mma_abt<T, D, NT>(ds, sdQ + warp * 16 * LD, sK, g, t);
                if (has_tk) mma_abt<T, D, NT>(ds, sQw, sK + 2 * BC * LD, g, t);
            }
            // scores in the log2 domain, masked past T and above the causal diagonal
            const int k0 = kt * BC;
            const bool edge = k0 + BC > p.T || (p.causal && k0 + BC - 1 > rw + off);
            float mx[2] = {-INFINITY, -INFINITY};
#pragma unroll
            for (int nt = 0; nt < NT; nt++)
#pragma unroll
                for (int c = 0; c < 4; c++) {
                    float x = s[nt][c] * sl2;
                    if (edge) {
                        const int col = k0 + nt * 8 + 2 * t + (c & 1), row = rw + g + (c >> 1) * 8;
                        if (col >= p.T || (p.causal && col > row + off)) x = -INFINITY;
                    }
                    s[nt][c] = x;
                    mx[c >> 1] = fmaxf(mx[c >> 1], x);
                }
            float base[2], corr[2];
#pragma unroll
            for (int r = 0; r < 2; r++) {
                const float mn = fmaxf(m[r], quad_max(mx[r]));
                base[r] = mn == -INFINITY ? 0.f : mn; // a row with nothing visible yet stays empty
                corr[r] = exp2f(m[r] - base[r]);
                m[r] = mn;
            }
            float ls[2] = {0.f, 0.f}, rsum[2] = {0.f, 0.f};
#pragma unroll
            for (int nt = 0; nt < NT; nt++)
#pragma unroll
                for (int c = 0; c < 4; c++) {
                    const float pv = exp2f(s[nt][c] - base[c >> 1]);
                    s[nt][c] = pv;
                    ls[c >> 1] += pv;
                    if constexpr (JVP) {
                        const float d = ds[nt][c] * sc;
                        rsum[c >> 1] += pv * d;
                        ds[nt][c] = pv * d; // P o dS, the A operand of (P o dS) V
                    }
                }
#pragma unroll
            for (int r = 0; r < 2; r++) {
                l[r] = l[r] * corr[r] + ls[r];
                if constexpr (JVP) rs[r] = rs[r] * corr[r] + rsum[r];
            }
#pragma unroll
            for (int nd = 0; nd < ND; nd++)
#pragma unroll
                for (int c = 0; c < 4; c++) {
                    oacc[nd][c] *= corr[c >> 1];
                    if constexpr (JVP) tacc[nd][c] *= corr[c >> 1];
                }
            mma_pb<T, D, BC>(oacc, s, sV, lane);
            if constexpr (JVP) {
                if (has_tq || has_tk) mma_pb<T, D, BC>(tacc, ds, sV, lane);
                if (has_tv) mma_pb<T, D, BC>(tacc, s, sK + 3 * BC * LD, lane);
            }
        }
    }
    float inv[2], rr[2];
#pragma unroll
    for (int r = 0; r < 2; r++) {
        const float lt = quad_sum(l[r]);
        inv[r] = lt > 0.f ? 1.f / lt : 0.f; // a row that sees no key: output 0, L = -inf
        rr[r] = quad_sum(rs[r]) * inv[r];
        const int row = rw + g + r * 8;
        if (p.stats && t == 0 && row < p.S)
            ((float *)p.stats)[(int64_t)bh * p.S + row] = lt > 0.f ? m[r] * kLn2 + logf(lt) : -INFINITY;
    }
    if (p.o.p) store_rows<T, D>(p.o, b, h, rw, p.S, oacc, inv, g, t);
    if constexpr (JVP) {
        // dO = b / l - r O, with O unrounded
#pragma unroll
        for (int nd = 0; nd < ND; nd++)
#pragma unroll
            for (int c = 0; c < 4; c++) tacc[nd][c] = tacc[nd][c] * inv[c >> 1] - rr[c >> 1] * oacc[nd][c] * inv[c >> 1];
        const float one[2] = {1.f, 1.f};
        store_rows<T, D>(p.dout, b, h, rw, p.S, tacc, one, g, t);
    }
}

// ---- backward -----------------------------------------------------------------------------------
// Delta_i = dO_i . O_i (f32), one warp a row.
template <typename T> __global__ void __launch_bounds__(kThreads) k_delta(const Params p) {
    WarpRow w;
    if (!warp_row<kThreads / 32>(p, p.S, w)) return;
    const T *o = at<T>(p.o, w.b, w.h, w.r), *d = at<T>(p.dout, w.b, w.h, w.r);
    float s = 0.f;
    for (int c = w.lane; c < p.Dv; c += 32) s += to_c(o[c]) * to_c(d[c]);
#pragma unroll
    for (int x = 16; x > 0; x >>= 1) s += __shfl_xor_sync(0xffffffffu, s, x);
    if (w.lane == 0) ((float *)p.delta)[w.row] = s;
}

// dQ: grid (query tiles, B H); a block walks the key tiles its rows see.
// Shared: Q, dO (64 x LD), then two buffers of K V (64 x LD each).
template <typename T, int D> __global__ void __launch_bounds__(kThreads) k_bwd_dq_tc(const Params p) {
    constexpr int BR = 64, BC = 64, LD = D + 8, ND = D / 8, NT = BC / 8;
    T *sQ = reinterpret_cast<T *>(smem_tc), *sdO = sQ + BR * LD, *sKV = sdO + BR * LD;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    const int qt = gridDim.x - 1 - blockIdx.x;
    const int bh = blockIdx.y, b = bh / p.H, h = bh % p.H;
    const int q0 = qt * BR, off = p.T - p.S, rw = q0 + warp * 16;
    const int kend = tile_key_end(p, q0);
    const float sl2 = (float)p.scale * kLog2e;

    float dq[ND][4];
#pragma unroll
    for (int nd = 0; nd < ND; nd++)
#pragma unroll
        for (int c = 0; c < 4; c++) dq[nd][c] = 0.f;
    // Per row: L in the log2 domain (+inf where the row sees nothing or is padding: P = 0), Delta.
    float L2[2], dl[2];
#pragma unroll
    for (int r = 0; r < 2; r++) {
        const int row = rw + g + r * 8;
        const float L = row < p.S ? ((const float *)p.stats)[(int64_t)bh * p.S + row] : -INFINITY;
        L2[r] = L == -INFINITY ? INFINITY : L * kLog2e;
        dl[r] = row < p.S ? ((const float *)p.delta)[(int64_t)bh * p.S + row] : 0.f;
    }
    if (kend > 0) {
        tile_async<T, BR, D>(sQ, p.q, b, h, q0, p.S);
        tile_async<T, BR, D>(sdO, p.dout, b, h, q0, p.S);
        auto load_kv = [&](int kt) {
            T *buf = sKV + (kt & 1) * 2 * BC * LD;
            tile_async<T, BC, D>(buf, p.k, b, h, kt * BC, p.T);
            tile_async<T, BC, D>(buf + BC * LD, p.v, b, h, kt * BC, p.T);
        };
        load_kv(0);
        cp_async_commit();
        const int nkt = (kend + BC - 1) / BC;
        for (int kt = 0; kt < nkt; kt++) {
            cp_async_wait_all();
            __syncthreads();
            if (kt + 1 < nkt) load_kv(kt + 1);
            cp_async_commit();
            const T *sK = sKV + (kt & 1) * 2 * BC * LD, *sV = sK + BC * LD;
            float s[NT][4], dp[NT][4];
#pragma unroll
            for (int nt = 0; nt < NT; nt++)
#pragma unroll
                for (int c = 0; c < 4; c++) s[nt][c] = dp[nt][c] = 0.f;
            mma_abt<T, D, NT>(s, sQ + warp * 16 * LD, sK, g, t);
            mma_abt<T, D, NT>(dp, sdO + warp * 16 * LD, sV, g, t);
            const int k0 = kt * BC;
            const bool edge = k0 + BC > p.T || (p.causal && k0 + BC - 1 > rw + off);
#pragma unroll
            for (int nt = 0; nt < NT; nt++)
#pragma unroll
                for (int c = 0; c < 4; c++) {
                    float pv = exp2f(s[nt][c] * sl2 - L2[c >> 1]);
                    if (edge) {
                        const int col = k0 + nt * 8 + 2 * t + (c & 1), row = rw + g + (c >> 1) * 8;
                        if (col >= p.T || (p.causal && col > row + off)) pv = 0.f;
                    }
                    s[nt][c] = pv * (dp[nt][c] - dl[c >> 1]); // dS
                }
            mma_pb<T, D, BC>(dq, s, sK, lane);
        }
    }
    const float mul[2] = {(float)p.scale, (float)p.scale};
    store_rows<T, D>(p.dq, b, h, rw, p.S, dq, mul, g, t);
}

// dK, dV: grid (key tiles, B H); a block walks the query tiles (BQ rows) that see its keys.
// Shared: K, V (64 x LD), then two buffers of Q dO (BQ x LD each) and of L (log2) and Delta (BQ).
template <typename T, int D, int BQ> __global__ void __launch_bounds__(kThreads) k_bwd_dkv_tc(const Params p) {
    constexpr int BC = 64, LD = D + 8, ND = D / 8, NT = BQ / 8;
    T *sK = reinterpret_cast<T *>(smem_tc), *sV = sK + BC * LD, *sQO = sV + BC * LD;
    float *sLD = reinterpret_cast<float *>(sQO + 2 * 2 * BQ * LD); // [2][L BQ, Delta BQ]
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    const int bh = blockIdx.y, b = bh / p.H, h = bh % p.H;
    const int k0 = blockIdx.x * BC, off = p.T - p.S, kw = k0 + warp * 16;
    const float sl2 = (float)p.scale * kLog2e;
    // Queries that see a key of this tile: i >= k0 - off (causal), from a multiple of BQ.
    int qs = 0;
    if (p.causal) {
        const int64_t lo = (int64_t)k0 - off;
        qs = lo <= 0 ? 0 : (lo >= p.S ? p.S : (int)(lo / BQ * BQ));
    }
    const int nqt = (p.S - qs + BQ - 1) / BQ;

    float dk[ND][4], dv[ND][4];
#pragma unroll
    for (int nd = 0; nd < ND; nd++)
#pragma unroll
        for (int c = 0; c < 4; c++) dk[nd][c] = dv[nd][c] = 0.f;
    if (nqt > 0) {
        tile_async<T, BC, D>(sK, p.k, b, h, k0, p.T);
        tile_async<T, BC, D>(sV, p.v, b, h, k0, p.T);
        auto load_q = [&](int it) {
            const int i0 = qs + it * BQ;
            T *buf = sQO + (it & 1) * 2 * BQ * LD;
            tile_async<T, BQ, D>(buf, p.q, b, h, i0, p.S);
            tile_async<T, BQ, D>(buf + BQ * LD, p.dout, b, h, i0, p.S);
            float *sl = sLD + (it & 1) * 2 * BQ;
            for (int c = threadIdx.x; c < BQ; c += kThreads) {
                const int i = i0 + c;
                const float L = i < p.S ? ((const float *)p.stats)[(int64_t)bh * p.S + i] : -INFINITY;
                sl[c] = L == -INFINITY ? INFINITY : L * kLog2e;
                sl[BQ + c] = i < p.S ? ((const float *)p.delta)[(int64_t)bh * p.S + i] : 0.f;
            }
        };
        load_q(0);
        cp_async_commit();
        for (int it = 0; it < nqt; it++) {
            cp_async_wait_all();
            __syncthreads(); // also publishes the plain stores of L and Delta
            if (it + 1 < nqt) load_q(it + 1);
            cp_async_commit();
            const T *sQ = sQO + (it & 1) * 2 * BQ * LD, *sdO = sQ + BQ * LD;
            const float *sl = sLD + (it & 1) * 2 * BQ;
            const int i0 = qs + it * BQ;
            float s[NT][4], dp[NT][4]; // transposed: rows are keys, columns queries
#pragma unroll
            for (int nt = 0; nt < NT; nt++)
#pragma unroll
                for (int c = 0; c < 4; c++) s[nt][c] = dp[nt][c] = 0.f;
            mma_abt<T, D, NT>(s, sK + warp * 16 * LD, sQ, g, t);
            mma_abt<T, D, NT>(dp, sV + warp * 16 * LD, sdO, g, t);
            const bool edge = p.causal && kw + 15 > i0 + off;
#pragma unroll
            for (int nt = 0; nt < NT; nt++)
#pragma unroll
                for (int c = 0; c < 4; c++) {
                    const int qc = nt * 8 + 2 * t + (c & 1);
                    float pv = exp2f(s[nt][c] * sl2 - sl[qc]);
                    if (edge && kw + g + (c >> 1) * 8 > i0 + qc + off) pv = 0.f;
                    s[nt][c] = pv;
                    dp[nt][c] = pv * (dp[nt][c] - sl[BQ + qc]); // dS^T
                }
            mma_pb<T, D, BQ>(dv, s, sdO, lane);
            mma_pb<T, D, BQ>(dk, dp, sQ, lane);
        }
    }
    const float one[2] = {1.f, 1.f}, mul[2] = {(float)p.scale, (float)p.scale};
    store_rows<T, D>(p.dk, b, h, kw, p.T, dk, mul, g, t);
    store_rows<T, D>(p.dv, b, h, kw, p.T, dv, one, g, t);
}

// ---- launchers --------------------------------------------------------------------------------
template <typename K> int launch(K kern, dim3 grid, size_t smem, const Params &p, cudaStream_t st) {
    if (grid.x == 0 || grid.y == 0) return 0;
    // Above 48 KB a kernel must opt in (per device: set on every launch, a cheap host call).
    cudaError_t e = cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem);
    if (e != cudaSuccess) return (int)e;
    kern<<<grid, kThreads, smem, st>>>(p);
    return launch_status();
}

constexpr size_t tile_bytes(int rows, int D) { return (size_t)rows * (D + 8) * 2; }

template <typename T, int D, bool JVP> int fwd_typed(const Params &p, cudaStream_t st) {
    constexpr int BC = (JVP && D > 64) ? 16 : 64; // registers: JVP holds two output tiles
    const size_t smem = tile_bytes((JVP ? 2 : 1) * 64 + 2 * (JVP ? 4 : 2) * BC, D);
    const dim3 grid((unsigned)((p.S + 63) / 64), (unsigned)(p.B * p.H));
    return launch(k_fwd_tc<T, D, BC, JVP>, grid, smem, p, st);
}

template <typename T, int D> int bwd_typed(const Params &p, cudaStream_t st) {
    constexpr int BQ = D > 64 ? 32 : 64; // registers: dK and dV tiles stay resident
    const int64_t rows = (int64_t)p.B * p.H * p.S;
    if (rows > 0) {
        const int64_t blocks = (rows + kThreads / 32 - 1) / (kThreads / 32);
        if (blocks > INT32_MAX) return (int)cudaErrorInvalidConfiguration;
        k_delta<T><<<(unsigned)blocks, kThreads, 0, st>>>(p);
        int rc = launch_status();
        if (rc) return rc;
    }
    const unsigned bh = (unsigned)(p.B * p.H);
    if (p.dq.p) {
        int rc = launch(k_bwd_dq_tc<T, D>, dim3((unsigned)((p.S + 63) / 64), bh), tile_bytes(6 * 64, D), p, st);
        if (rc) return rc;
    }
    if (!p.dk.p) return 0;
    return launch(k_bwd_dkv_tc<T, D, BQ>, dim3((unsigned)((p.T + 63) / 64), bh),
                  tile_bytes(2 * 64 + 4 * BQ, D) + 4 * BQ * sizeof(float), p, st);
}

bool aligned16(const Ten &x) {
    if (!x.p) return true;
    return ((uintptr_t)x.p & 15) == 0 && x.sb % 8 == 0 && x.sh % 8 == 0 && x.sr % 8 == 0;
}

template <bool JVP> int fwd_dispatch(const Params &p, int dt, cudaStream_t st) {
    if (dt == FLX_BF16)
        return p.D == 64 ? fwd_typed<__nv_bfloat16, 64, JVP>(p, st) : fwd_typed<__nv_bfloat16, 128, JVP>(p, st);
    return p.D == 64 ? fwd_typed<__half, 64, JVP>(p, st) : fwd_typed<__half, 128, JVP>(p, st);
}

} // namespace

bool tc_supported(const Params &p, int dt) {
    if (dt != FLX_BF16 && dt != FLX_F16) return false;
    if (p.D != p.Dv || (p.D != 64 && p.D != 128)) return false;
    if ((int64_t)p.B * p.H > 65535) return false; // grid.y
    return aligned16(p.q) && aligned16(p.k) && aligned16(p.v) && aligned16(p.o) && aligned16(p.dout) &&
           aligned16(p.dq) && aligned16(p.dk) && aligned16(p.dv);
}

int tc_forward(const Params &p, int dt, cudaStream_t st) { return fwd_dispatch<false>(p, dt, st); }
int tc_jvp(const Params &p, int dt, cudaStream_t st) { return fwd_dispatch<true>(p, dt, st); }
int tc_backward(const Params &p, int dt, cudaStream_t st) {
    if (dt == FLX_BF16) return p.D == 64 ? bwd_typed<__nv_bfloat16, 64>(p, st) : bwd_typed<__nv_bfloat16, 128>(p, st);
    return p.D == 64 ? bwd_typed<__half, 64>(p, st) : bwd_typed<__half, 128>(p, st);
}

} // namespace attn
} // namespace flxk
