// attention.cuh — what the two attention kernel files share (kernels/attention.cu: the generic
// warp-per-row kernels and the launcher; kernels/attention_tc.cu: the tensor-core kernels for
// bf16/f16 at head dims 64 and 128). Private to those files; host code never includes it.
//
// Notation (as in flx_attention): q (B, H, S, D), k (B, H, T, D), v (B, H, T, Dv), o (B, H, S, Dv),
// s = scale, off = T - S. Query i sees key j when j < T and, if causal, j <= i + off (bottom-right
// aligned). P = softmax over the visible keys of s q_i . k_j; L_i = log sum_j exp(s q_i . k_j)
// (natural log; -inf for a row that sees no key, whose output and gradients are 0).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <math.h>
#include <stdint.h>

#include "cuda_common.cuh"

namespace flxk {
namespace attn {

// One (B, H, rows, cols) operand: element (b, h, r, c) at p + b sb + h sh + r sr + c (the last
// dim is contiguous; the launcher checks it).
struct Ten {
    const void *p;
    int64_t sb, sh, sr;
};

// Everything a kernel of the family needs (filled from flx_attention_args by the launcher). A
// NULL pointer is an operand not given: FWD without stats (inference), JVP tangents (zero), BWD
// without dq or without dk and dv (not wanted). stats (L) and delta are dense (B, H, S) arrays
// of the accumulation type (f32; f64 for f64 inputs).
struct Params {
    int B, H, S, T, D, Dv;
    int causal;
    double scale;
    Ten q, k, v;    // primal inputs
    Ten o;          // FWD: out (written); BWD: the forward's output (read); JVP: NULL
    Ten dout;       // BWD: the cotangent of o (read); JVP: the tangent of o (written)
    Ten dq, dk, dv; // BWD: the gradients (written); JVP: the tangents of q, k, v (read)
    void *stats;    // L: written by FWD, read by BWD
    void *delta;    // BWD scratch: rowsum(dout * o)
};

// Accumulation (compute) type: f32 for f32 and the halves, f64 for f64; conversions are
// cuda_common.cuh's to_c / from_c (exact loads, one RNE rounding on store).
template <typename T> using acc_t = compute_t<T>;

template <typename T>
__device__ __forceinline__ const T *at(const Ten &t, int b, int h, int64_t r) {
    return (const T *)t.p + (int64_t)b * t.sb + (int64_t)h * t.sh + r * t.sr;
}
template <typename T> __device__ __forceinline__ T *at_w(const Ten &t, int b, int h, int64_t r) {
    return (T *)at<T>(t, b, h, r);
}

// The row of a (B, H, n) row space that warp threadIdx.x / 32 of a block of W warps owns: the
// flat row, its index r within its (b, h) and bh = b H + h. False for a warp past the last row
// (whole warps leave, so the kernels that use it must have no block barrier).
struct WarpRow {
    int warp, lane, r, b, h;
    int64_t row, bh;
};
template <int W> __device__ __forceinline__ bool warp_row(const Params &p, int n, WarpRow &w) {
    w.warp = threadIdx.x >> 5;
    w.lane = threadIdx.x & 31;
    w.row = (int64_t)blockIdx.x * W + w.warp;
    if (w.row >= (int64_t)p.B * p.H * n) return false;
    w.r = (int)(w.row % n);
    w.bh = w.row / n;
    w.b = (int)(w.bh / p.H);
    w.h = (int)(w.bh % p.H);
    return true;
}

enum Mode { kFwd, kBwd, kJvp };

// One mode: on the tensor-core path when it takes the problem, else on the generic one
// (attention.cu). Returns 0 or a cudaError_t.
int run(int mode, int elem_dtype, const Params &p, cudaStream_t st);

// Tensor-core launchers (attention_tc.cu). Each returns 0, or a cudaError_t; tc_supported says
// whether the tensor-core path takes this dtype (an flx_dtype), these shapes and layouts (bf16/f16,
// D == Dv in {64, 128}, every operand 16-byte aligned with strides in multiples of 8, B H <= 65535);
// otherwise the generic path runs.
bool tc_supported(const Params &p, int elem_dtype);
int tc_forward(const Params &p, int elem_dtype, cudaStream_t st);
int tc_backward(const Params &p, int elem_dtype, cudaStream_t st);
int tc_jvp(const Params &p, int elem_dtype, cudaStream_t st);

} // namespace attn
} // namespace flxk
