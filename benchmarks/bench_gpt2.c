/*
 * bench_gpt2.c — the flagship workload of flx_bench_suite: one training step of GPT-2 small
 * (124M parameters, vocabulary padded to 50304; examples/gpt2_model.h, the model the example and
 * the tests train) on 8 x 1024 synthetic tokens: forward, fused cross-entropy, backward and AdamW
 * (f32 master weights for bf16 parameters; weight decay on the 2-d weights).
 *   bf16 eager        each step recorded and run eagerly (flx_backward, flx_optim_step)
 *   bf16 plan+graph   the whole step as one plan captured into one CUDA graph
 *   f32 plan+graph    the same in strict f32 (no tensor cores): the precision reference
 * Each row prints tokens/s and the model flops utilisation (MFU): model flops per step = (6 N +
 * 12 L T C) tokens (PaLM / nanoGPT; N = 124,475,904 with the padded vocabulary), over the dense
 * bf16 peak of the GPU (gpt2_peak_bf16_flops: 989.4 TFLOP/s for an H100/H200 SXM). The note
 * carries "MFU x" for summarize.py's min_mfu goal. PyTorch's rows (bench_torch.py) train the same
 * model on the same token ids (splitmix64, seed 1) eagerly with autocast and as a whole-step CUDA
 * graph. --smoke runs the tiny configuration (2 x 16 tokens) on the CPU under the same names.
 */
#define _POSIX_C_SOURCE 200809L
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "bench_suite.h"
#include "gpt2_model.h"

typedef struct gpt2_bench {
    gpt2_model m;
    flx_tensor *tokens, *targets;
    flx_plan *plan;
} gpt2_bench;

static int eager_rep(void *q, int rep) {
    (void)rep;
    gpt2_bench *b = (gpt2_bench *)q;
    return gpt2_step_eager(&b->m, b->tokens, b->targets, NULL) == FLX_OK ? 0 : -1;
}

static int plan_rep(void *q, int rep) {
    (void)rep;
    gpt2_bench *b = (gpt2_bench *)q;
    return flx_plan_run(b->plan, 0, NULL) == FLX_OK ? 0 : -1;
}

/* One row: the model in dt, timed eagerly or as a captured plan. */
static void gpt2_row(const char *name, flx_dtype dt, bool graph, int reps, int trials) {
    if (!bench_selected(name)) return;
    const int64_t B = g_smoke ? 2 : 8;
    gpt2_config cfg = g_smoke ? gpt2_config_tiny(dt) : gpt2_config_small(dt);
    const int64_t T = cfg.max_seq;
    const char *shape = "8x1024";
    gpt2_bench b;
    memset(&b, 0, sizeof b);
    flx_scope_begin();
    flx_status st = gpt2_init(&b.m, g_ctx, &cfg, 1234, NULL);
    if (st == FLX_OK) st = gpt2_synthetic_batch(g_ctx, &cfg, B, T, 1, &b.tokens, &b.targets);
    if (st == FLX_OK && graph) {
        b.plan = gpt2_compile_step(&b.m, b.tokens, b.targets, FLX_PLAN_CAPTURE_DEFAULT);
        if (!b.plan) st = FLX_ERR_INVALID_ARGUMENT;
    }
    if (st != FLX_OK) {
        char why[600];
        snprintf(why, sizeof why, "failed: %s", gpt2_error());
        bench_report_missing(name, shape, why);
    } else {
        double t = bench_time(graph ? plan_rep : eager_rep, &b, reps, trials);
        double loss = NAN;
        if (t > 0 && graph) {
            flx_tensor *out = flx_plan_output(b.plan, 0);
            if (flx_item(out, &loss) != FLX_OK) t = -1;
        }
        double tokens = (double)(B * T), flops = gpt2_flops_per_token(&cfg, T) * tokens;
        double peak = gpt2_peak_bf16_flops();
        char note[384];
        int k = snprintf(note, sizeof note, "%.0f tokens/s", t > 0 ? tokens / t : 0.0);
        if (peak > 0 && t > 0)
            k += snprintf(note + k, sizeof note - (size_t)k, "; MFU %.3f of %.1f TFLOP/s bf16 dense",
                          flops / t / peak, peak / 1e12);
        if (!isnan(loss)) k += snprintf(note + k, sizeof note - (size_t)k, "; loss %.3f", loss);
        flx_plan_info info;
        if (graph && !g_smoke && flx_plan_get_info(b.plan, &info) == FLX_OK && !info.captured)
            snprintf(note + k, sizeof note - (size_t)k, "; NOT captured: %.80s", info.capture_reason);
        bench_report(name, shape, t, 0, flops, note);
    }
    flx_plan_destroy(b.plan);
    gpt2_destroy(&b.m);
    flx_scope_end(0, NULL);
}

void bench_gpt2_all(int trials) {
    int r_bf16 = g_smoke ? 1 : (g_quick ? 7 : 10), r_f32 = g_smoke ? 1 : (g_quick ? 2 : 5);
    gpt2_row("gpt2-small train step 8x1024 bf16 eager", FLX_BF16, false, r_bf16, trials);
    gpt2_row("gpt2-small train step 8x1024 bf16 plan+graph", FLX_BF16, true, r_bf16, trials);
    gpt2_row("gpt2-small train step 8x1024 f32 plan+graph", FLX_F32, true, r_f32, trials);
}
