// lu_testing.h — what the LU family's tests share: float64 references written independently of
// the runtime's partial-pivoting LU (Gauss-Jordan with full pivoting, cofactor expansion), test
// matrices, and the kernel count of an evaluation.
#pragma once

#include <algorithm>
#include <cmath>
#include <vector>

#include "testing.h"

namespace flxt {
namespace lu {

using Mat = std::vector<double>;  // row-major n x n

// Well-conditioned random matrices: I + 0.5 R / sqrt(n), R uniform in [-1, 1); matrix b of a
// batch gets its first row negated when b is odd (negative determinants too).
inline Mat wellcond(int64_t batch, int64_t n, uint64_t seed) {
    Mat r = rand_values((size_t)(batch * n * n), seed);
    double s = 0.5 / std::sqrt((double)std::max<int64_t>(n, 1));
    for (int64_t b = 0; b < batch; b++)
        for (int64_t i = 0; i < n; i++)
            for (int64_t j = 0; j < n; j++) {
                double &v = r[(size_t)(b * n * n + i * n + j)];
                v = (i == j ? 1.0 : 0.0) + s * v;
                if (b % 2 == 1 && i == 0) v = -v;
            }
    return r;
}

// Gauss-Jordan with full pivoting in double: det and inverse of one matrix.
inline double ref_det_inv(Mat a, int64_t n, Mat *inv) {
    Mat e((size_t)(n * n), 0.0);
    for (int64_t i = 0; i < n; i++) e[(size_t)(i * n + i)] = 1.0;
    std::vector<int64_t> colperm((size_t)n);
    for (int64_t i = 0; i < n; i++) colperm[(size_t)i] = i;
    double det = 1.0;
    for (int64_t k = 0; k < n; k++) {
        int64_t pr = k, pc = k;
        for (int64_t i = k; i < n; i++)
            for (int64_t j = k; j < n; j++)
                if (std::fabs(a[(size_t)(i * n + j)]) > std::fabs(a[(size_t)(pr * n + pc)])) pr = i, pc = j;
        if (a[(size_t)(pr * n + pc)] == 0.0) return 0.0;
        if (pr != k) {
            for (int64_t j = 0; j < n; j++) {
                std::swap(a[(size_t)(pr * n + j)], a[(size_t)(k * n + j)]);
                std::swap(e[(size_t)(pr * n + j)], e[(size_t)(k * n + j)]);
            }
            det = -det;
        }
        if (pc != k) {  // column swap of a: x's entries swap, undone at the end
            for (int64_t i = 0; i < n; i++) std::swap(a[(size_t)(i * n + pc)], a[(size_t)(i * n + k)]);
            std::swap(colperm[(size_t)pc], colperm[(size_t)k]);
            det = -det;
        }
        double p = a[(size_t)(k * n + k)];
        det *= p;
        for (int64_t j = 0; j < n; j++) {
            a[(size_t)(k * n + j)] /= p;
            e[(size_t)(k * n + j)] /= p;
        }
        for (int64_t i = 0; i < n; i++) {
            if (i == k) continue;
            double f = a[(size_t)(i * n + k)];
            if (f == 0.0) continue;
            for (int64_t j = 0; j < n; j++) {
                a[(size_t)(i * n + j)] -= f * a[(size_t)(k * n + j)];
                e[(size_t)(i * n + j)] -= f * e[(size_t)(k * n + j)];
            }
        }
    }
    if (inv) {  // rows of e are the inverse of the column-permuted matrix: unpermute rows
        inv->assign((size_t)(n * n), 0.0);
        for (int64_t i = 0; i < n; i++)
            for (int64_t j = 0; j < n; j++) (*inv)[(size_t)(colperm[(size_t)i] * n + j)] = e[(size_t)(i * n + j)];
    }
    return det;
}

// Cofactor matrix by cofactor expansion: C[i][j] = (-1)^(i+j) det(minor(i, j)).
inline Mat ref_cofactor(const Mat &a, int64_t n) {
    Mat c((size_t)(n * n));
    for (int64_t i = 0; i < n; i++)
        for (int64_t j = 0; j < n; j++) {
            Mat m;
            for (int64_t r = 0; r < n; r++)
                for (int64_t s = 0; s < n; s++)
                    if (r != i && s != j) m.push_back(a[(size_t)(r * n + s)]);
            double d = n == 1 ? 1.0 : ref_det_inv(m, n - 1, nullptr);
            c[(size_t)(i * n + j)] = ((i + j) % 2 ? -1.0 : 1.0) * d;
        }
    return c;
}

inline Mat transpose(const Mat &a, int64_t n) {
    Mat t(a.size());
    for (int64_t i = 0; i < n; i++)
        for (int64_t j = 0; j < n; j++) t[(size_t)(j * n + i)] = a[(size_t)(i * n + j)];
    return t;
}

inline Mat matmul(const Mat &a, const Mat &b, int64_t m, int64_t k, int64_t n) {
    Mat c((size_t)(m * n), 0.0);
    for (int64_t i = 0; i < m; i++)
        for (int64_t p = 0; p < k; p++)
            for (int64_t j = 0; j < n; j++) c[(size_t)(i * n + j)] += a[(size_t)(i * k + p)] * b[(size_t)(p * n + j)];
    return c;
}

inline Mat sub(const Mat &v, size_t off, size_t len) { return Mat(v.begin() + (long)off, v.begin() + (long)(off + len)); }

// Kernels queued to evaluate t, whose inputs are computed already (0 with a failure if t is NULL).
inline uint64_t kernels_to_eval(flx_ctx *ctx, flx_tensor *t) {
    EXPECT_NE(t, nullptr) << flx_last_error();
    EXPECT_EQ(flx_ctx_reset_stats(ctx), FLX_OK);
    if (!t || flx_eval(1, &t) != FLX_OK) {
        ADD_FAILURE() << flx_last_error();
        return 0;
    }
    flx_ctx_stats st{};
    EXPECT_EQ(flx_ctx_get_stats(ctx, &st), FLX_OK);
    return st.kernels;
}

}  // namespace lu
}  // namespace flxt
