/*
 * bench_kernels.c — the single-kernel workloads of flx_bench_suite: copy and elementwise ops,
 * the fused bias-GELU-residual chain, the softmax family, cross-entropy, matmul and the LU family.
 * Bytes are those a minimal kernel must move (each input read once, each output written once);
 * tools/gpu-check divides them by the time and by the copy bandwidth of the same run. Workloads
 * small enough to sit in L2 rotate through several input sets. In --smoke the shapes are tiny
 * but the names stay those of the list, so a CPU run checks that the suite reports every row.
 */
#define _POSIX_C_SOURCE 200809L
#include <stdio.h>
#include <string.h>

#include "bench_suite.h"

static void shape_str(char *buf, size_t n, int nd, const int64_t *s) {
    size_t k = 0;
    buf[0] = '\0';
    for (int i = 0; i < nd && k < n; i++) k += (size_t)snprintf(buf + k, n - k, i ? "x%lld" : "%lld", (long long)s[i]);
}

/* ---- copy and elementwise --------------------------------------------------------------------
 *   copy       flx_to_ctx to the same context (a D2D copy)                 bytes 2N
 *   add, mul   a op b                                                      bytes 3N
 *   tanh, gelu                                                             bytes 2N
 *   relu vjp   the cotangent of relu: g where x > 0, else 0 (x, g in)      bytes 3N  */
enum { EW_COPY, EW_ADD, EW_MUL, EW_TANH, EW_GELU, EW_RELU_VJP, EW_COUNT };
typedef struct ew { flx_tensor *a, *b, *al; int op; } ew;
static flx_status ew_graph(void *p, int rep, flx_tensor **r) {
    const ew *s = (const ew *)p;
    (void)rep;
    switch (s->op) {
    case EW_COPY: r[0] = flx_to_ctx(s->a, g_ctx); break;
    case EW_ADD: r[0] = flx_add(s->a, s->b); break;
    case EW_MUL: r[0] = flx_mul(s->a, s->b); break;
    case EW_TANH: r[0] = flx_tanh(s->a); break;
    case EW_GELU: r[0] = flx_gelu(s->a); break;
    default: return bench_vjp(flx_relu(s->al), s->b, s->al, &r[0]);
    }
    return FLX_OK;
}

void bench_elementwise(int64_t n, int reps, int trials) {
    static const char *names[EW_COUNT] = {"copy 2^28 f32", "add 2^28 f32", "mul 2^28 f32",
                                          "tanh 2^28 f32", "gelu 2^28 f32", "relu vjp 2^28 f32"};
    static const double traffic[EW_COUNT] = {2, 3, 3, 2, 2, 3};
    char shape[32];
    snprintf(shape, sizeof shape, "%lld", (long long)n);
    flx_scope_begin();
    ew s = {flx_normal(g_ctx, FLX_F32, 1, &n, 0, 1, 1), flx_normal(g_ctx, FLX_F32, 1, &n, 0, 1, 2),
            flx_normal(g_ctx, FLX_F32, 1, &n, 0, 1, 3), 0};
    if (s.al) flx_set_requires_grad(s.al, true);
    flx_tensor *k[3] = {s.a, s.b, s.al};
    bool ok = s.a && s.b && s.al && flx_eval(3, k) == FLX_OK;
    /* the copy always runs: every ratio of the run is relative to it */
    for (int op = 0; op < EW_COUNT; op++) {
        if (op > 0 && !bench_selected(names[op])) continue;
        s.op = op;
        double t = ok ? bench_time_graph(ew_graph, &s, reps, trials) : -1;
        bench_report(names[op], shape, t, traffic[op] * (double)n * 4, 0,
                     op == EW_COPY ? "reference: every ratio_to_copy divides by this bandwidth" : NULL);
    }
    flx_scope_end(0, NULL);
}

/* ---- fused elementwise chain: y = gelu(x + b) * s + r ------------------------------------------
 * x, r (rows, cols); b, s (cols) broadcast over rows; four public ops (fusing them is the
 * evaluator's business). Bytes of the minimal fused kernel (b and s not counted):
 *   fwd  read x, r; write y                                               3N floats
 *   vjp  gx = g * s * gelu'(x + b) for a cotangent g, built from the primal x every repetition
 *        and evaluated alone: read x, g; write gx (r does not enter it)   3N floats */
typedef struct fz { flx_tensor *x, *xl, *b, *s, *r, *g; int vjp; } fz;
static flx_tensor *fz_chain(const fz *f, flx_tensor *x) {
    return flx_add(flx_mul(flx_gelu(flx_add(x, f->b)), f->s), f->r);
}
static flx_status fz_graph(void *p, int rep, flx_tensor **r) {
    const fz *f = (const fz *)p;
    (void)rep;
    if (f->vjp) return bench_vjp(fz_chain(f, f->xl), f->g, f->xl, &r[0]);
    r[0] = fz_chain(f, f->x);
    return FLX_OK;
}

void bench_fused(int64_t rows, int64_t cols, int reps, int trials) {
    static const char *names[2] = {"fused bias-gelu-res fwd 2^26 f32", "fused bias-gelu-res vjp 2^26 f32"};
    if (!bench_selected(names[0]) && !bench_selected(names[1])) return;
    int64_t sh[2] = {rows, cols};
    char shape[48];
    shape_str(shape, sizeof shape, 2, sh);
    flx_scope_begin();
    fz f = {flx_normal(g_ctx, FLX_F32, 2, sh, 0, 1, 31), flx_normal(g_ctx, FLX_F32, 2, sh, 0, 1, 32),
            flx_normal(g_ctx, FLX_F32, 1, &cols, 0, 1, 33), flx_normal(g_ctx, FLX_F32, 1, &cols, 1, 0.5, 34),
            flx_normal(g_ctx, FLX_F32, 2, sh, 0, 1, 35), flx_normal(g_ctx, FLX_F32, 2, sh, 0, 1, 36), 0};
    if (f.xl) flx_set_requires_grad(f.xl, true);
    flx_tensor *k[6] = {f.x, f.xl, f.b, f.s, f.r, f.g};
    bool ok = f.x && f.xl && f.b && f.s && f.r && f.g && flx_eval(6, k) == FLX_OK;
    for (int m = 0; m < 2; m++) {
        if (!bench_selected(names[m])) continue;
        f.vjp = m;
        bench_report(names[m], shape, ok ? bench_time_graph(fz_graph, &f, reps, trials) : -1,
                     3.0 * (double)(rows * cols) * 4, 0,
                     m ? "bytes 3N: x, g in; gx out" : "bytes 3N: x, r in; y out");
    }
    flx_scope_end(0, NULL);
}

/* ---- softmax family along the last axis, or along axis 0 (strided rows) -----------------------
 *   fwd  read x, write y                                                  2N
 *   vjp  y (g - <y, g>) from a computed y: read y, g; write               3N
 *   jvp  the tangent of y for a tangent g of x, y computed: read y, g; write   3N
 * (the floors any implementation must move; the bandwidth column is against them) */
typedef struct smx { flx_tensor *x, *xl, *y, *g, *labels; int mode, axis; } smx;
static flx_status smx_graph(void *p, int rep, flx_tensor **r) {
    smx *s = (smx *)p;
    (void)rep;
    switch (s->mode) {
    case 0: r[0] = flx_softmax(s->x, s->axis, 1.0); return FLX_OK;
    case 1: return bench_vjp(s->y, s->g, s->xl, &r[0]);
    case 2: return flx_jvp(1, &s->xl, &s->g, 1, &s->y, &r[0]);
    default: /* the loss and its gradient, queued together */
        r[0] = flx_cross_entropy(s->xl, s->labels, FLX_REDUCTION_MEAN, -100);
        return bench_vjp(r[0], NULL, s->xl, &r[1]);
    }
}

/* Inputs for a softmax-family workload over `axis` (-1 or 0); false on error. */
static bool smx_setup(smx *s, int64_t rows, int64_t cols, int axis, bool labels) {
    int64_t sh[2] = {rows, cols};
    memset(s, 0, sizeof *s);
    s->axis = axis;
    s->x = flx_normal(g_ctx, FLX_F32, 2, sh, 0, 3, 1);
    s->xl = flx_normal(g_ctx, FLX_F32, 2, sh, 0, 3, 2);
    s->g = flx_normal(g_ctx, FLX_F32, 2, sh, 0, 1, 3);
    if (labels) s->labels = flx_cast(flx_uniform(g_ctx, FLX_F32, 1, &rows, 0, (double)cols - 0.5, 4), FLX_I64);
    if (!s->x || !s->xl || !s->g || (labels && !s->labels) || flx_set_requires_grad(s->xl, true) != FLX_OK)
        return false;
    s->y = flx_softmax(s->xl, axis, 1.0);
    flx_tensor *k[5] = {s->x, s->xl, s->g, s->y, s->labels};
    return s->y && flx_eval(labels ? 5 : 4, k) == FLX_OK;
}

void bench_softmax(const char *tag, int64_t rows, int64_t cols, int axis, bool fwd_only, int reps, int trials) {
    static const char *modes[3] = {"fwd", "vjp", "jvp"};
    static const double traffic[3] = {2, 3, 3};
    char names[3][64], shape[48];
    bool any = false;
    for (int m = 0; m < 3; m++) {
        snprintf(names[m], sizeof names[m], "softmax %s %s f32", modes[m], tag);
        any |= (m == 0 || !fwd_only) && bench_selected(names[m]);
    }
    if (!any) return;
    int64_t sh[2] = {rows, cols};
    shape_str(shape, sizeof shape, 2, sh);
    flx_scope_begin();
    smx s;
    bool ok = smx_setup(&s, rows, cols, axis, false);
    for (int m = 0; m < (fwd_only ? 1 : 3); m++) {
        if (!bench_selected(names[m])) continue;
        s.mode = m;
        bench_report(names[m], shape, ok ? bench_time_graph(smx_graph, &s, reps, trials) : -1,
                     traffic[m] * (double)(rows * cols) * 4, 0, NULL);
    }
    flx_scope_end(0, NULL);
}

/* Cross-entropy (mean, i64 labels) forward and its gradient wrt the logits, evaluated together.
 * The fused kernel reads x once and writes the gradient in the same pass: 2N is the floor any
 * implementation must move (a separate backward kernel would read x again, 3N); labels and
 * per-row values are not counted. The bandwidth column is therefore against the 2N floor. */
void bench_cross_entropy(const char *tag, int64_t rows, int64_t cols, int reps, int trials) {
    char name[64], shape[48];
    snprintf(name, sizeof name, "cross-entropy fwd+bwd %s f32", tag);
    if (!bench_selected(name)) return;
    int64_t sh[2] = {rows, cols};
    shape_str(shape, sizeof shape, 2, sh);
    flx_scope_begin();
    smx s;
    bool ok = smx_setup(&s, rows, cols, -1, true);
    s.mode = 3;
    bench_report(name, shape, ok ? bench_time_graph(smx_graph, &s, reps, trials) : -1,
                 2.0 * (double)(rows * cols) * 4, 0, "labels i64, mean");
    flx_scope_end(0, NULL);
}

/* ---- matmul ------------------------------------------------------------------------------------ */
typedef struct mm { flx_tensor *a, *b; } mm;
static flx_status mm_graph(void *p, int rep, flx_tensor **r) {
    const mm *s = (const mm *)p;
    (void)rep;
    r[0] = flx_matmul(s->a, s->b);
    return FLX_OK;
}

void bench_matmul(int64_t n, int reps, int trials) {
    const char *name = "matmul 4096^3 f32";
    if (!bench_selected(name)) return;
    char shape[64];
    snprintf(shape, sizeof shape, "%lldx%lldx%lld", (long long)n, (long long)n, (long long)n);
    flx_scope_begin();
    int64_t sh[2] = {n, n};
    mm s = {flx_normal(g_ctx, FLX_F32, 2, sh, 0, 1, 1), flx_normal(g_ctx, FLX_F32, 2, sh, 0, 1, 2)};
    bench_report(name, shape, s.a && s.b ? bench_time_graph(mm_graph, &s, reps, trials) : -1, 0,
                 2.0 * (double)n * n * n, "strict f32 (no TF32)");
    flx_scope_end(0, NULL);
}

/* ---- det / inv / solve (one rhs), and det / inv forward+backward for batches ------------------- */
#define LU_SETS 4
typedef struct lu { flx_tensor *a[LU_SETS], *b[LU_SETS], *gd, *gi; int mode; } lu;
static flx_status lu_graph(void *p, int rep, flx_tensor **r) {
    const lu *s = (const lu *)p;
    flx_tensor *a = s->a[rep % LU_SETS], *b = s->b[rep % LU_SETS];
    switch (s->mode) {
    case 0: r[0] = flx_det(a); return FLX_OK;
    case 1: r[0] = flx_inv(a); return FLX_OK;
    case 2: r[0] = flx_solve(a, b); return FLX_OK;
    case 3: return bench_vjp(flx_det(a), s->gd, a, &r[0]);
    default: return bench_vjp(flx_inv(a), s->gi, a, &r[0]);
    }
}

void bench_lu(const char *tag, int64_t batch, int64_t n, flx_dtype dt, int reps, int trials) {
    static const char *modes[5] = {"det", "inv", "solve", "det fwd+bwd", "inv fwd+bwd"};
    const char *dn = dt == FLX_F64 ? "f64" : "f32";
    int n_modes = batch > 1 ? 5 : 3;
    char names[5][64], shape[64];
    bool any = false;
    for (int m = 0; m < n_modes; m++) {
        snprintf(names[m], sizeof names[m], "%s %s %s", modes[m], tag, dn);
        any |= bench_selected(names[m]);
    }
    if (!any) return;
    int nd = batch > 1 ? 3 : 2;
    int64_t sh[3] = {batch, n, n}, shb[3] = {batch, n, 1};
    int64_t *ps = batch > 1 ? sh : sh + 1, *pb = batch > 1 ? shb : shb + 1;
    shape_str(shape, sizeof shape, nd, ps);
    flx_scope_begin();
    lu s;
    memset(&s, 0, sizeof s);
    bool ok = true;
    int sets = batch > 1 ? LU_SETS : 1; /* one large matrix does not fit in L2 anyway */
    for (int k = 0; k < sets && ok; k++) {
        /* well conditioned: n I + standard normal noise */
        flx_tensor *eye = flx_mul_scalar(flx_eye(g_ctx, dt, n, n), (double)n);
        s.a[k] = flx_add(flx_normal(g_ctx, dt, nd, ps, 0, 1, 10 + (uint64_t)k), eye);
        s.b[k] = flx_normal(g_ctx, dt, nd, pb, 0, 1, 20 + (uint64_t)k);
        ok = s.a[k] && s.b[k] && flx_eval(1, &s.a[k]) == FLX_OK;
        if (ok) s.a[k] = flx_detach(s.a[k]);
        ok = ok && s.a[k] && flx_set_requires_grad(s.a[k], true) == FLX_OK;
    }
    for (int k = sets; k < LU_SETS; k++) s.a[k] = s.a[0], s.b[k] = s.b[0];
    s.gd = flx_ones(g_ctx, dt, nd - 2, sh);
    s.gi = flx_ones(g_ctx, dt, nd, ps);
    ok = ok && s.gd && s.gi;
    for (int m = 0; m < n_modes; m++) {
        if (!bench_selected(names[m])) continue;
        s.mode = m;
        bench_report(names[m], shape, ok ? bench_time_graph(lu_graph, &s, reps, trials) : -1, 0, 0, NULL);
    }
    flx_scope_end(0, NULL);
}
