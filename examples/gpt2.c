/*
 * gpt2.c — trains a GPT-2 language model (examples/gpt2_model.h) with fluxion: AdamW, the whole
 * step (forward, backward, both optimiser updates) compiled once as a plan and replayed (on CUDA
 * as one CUDA graph launch per step).
 *
 * Usage: flx_example_gpt2 [--small] [--cpu | --cuda] [--dtype f32|f64|bf16] [--batch B]
 *                         [--seq T] [--steps N] [--every N] [--lr X] [--eager] [--random]
 *   default      the tiny model (vocab 64, 16 positions, 2 layers, 2 heads, 32 channels) on the
 *                CPU in f32, batch 8 x 16, on a repeating token pattern it can learn: the loss
 *                must fall (exit 1 otherwise). Seconds.
 *   --small      GPT-2 small (124M, vocab padded to 50304) on the GPU in bf16, batch 8 x 1024, on
 *                synthetic uniform tokens (a throughput run: the loss stays near ln 50257).
 *   --eager      record and run each step eagerly instead of replaying a plan.
 *   --random     uniform random tokens instead of the repeating pattern.
 * Prints the loss every N steps, tokens per second and, on a GPU, the model flops utilisation
 * against the bf16 dense peak of an H100/H200 SXM (989 TFLOP/s for 132 SMs, scaled by SM count).
 */
#define _POSIX_C_SOURCE 200809L
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "example_util.h"
#include "fluxion/fluxion.h"
#include "gpt2_model.h"

static int usage(const char *prog) {
    fprintf(stderr,
            "usage: %s [--small] [--cpu | --cuda] [--dtype f32|f64|bf16] [--batch B] [--seq T]\n"
            "          [--steps N] [--every N] [--lr X] [--eager] [--random]\n",
            prog);
    return 2;
}

static int parse_dtype(const char *s, flx_dtype *dt) {
    static const struct { const char *name; flx_dtype dt; } k[] = {
        {"f32", FLX_F32}, {"f64", FLX_F64}, {"bf16", FLX_BF16}};
    for (size_t i = 0; i < sizeof k / sizeof k[0]; i++)
        if (!strcmp(s, k[i].name)) return *dt = k[i].dt, 0;
    return -1;
}

/* A learnable stream: row b is the cycle (b + t * 5) mod 13 of token ids below vocab, so the next
 * token is a function of the current one. */
static flx_status pattern_batch(flx_ctx *ctx, const gpt2_config *c, int64_t batch, int64_t seq,
                                flx_tensor **tokens, flx_tensor **targets) {
    int64_t *x = (int64_t *)malloc((size_t)(2 * batch * seq) * sizeof *x);
    if (!x) return FLX_ERR_OUT_OF_MEMORY;
    int64_t period = c->vocab < 13 ? c->vocab : 13;
    for (int64_t b = 0; b < batch; b++)
        for (int64_t t = 0; t < seq; t++) {
            x[b * seq + t] = (b + t * 5) % period;
            x[batch * seq + b * seq + t] = (b + (t + 1) * 5) % period;
        }
    const int64_t shape[2] = {batch, seq};
    *tokens = flx_from_host(ctx, FLX_I64, 2, shape, x);
    *targets = flx_from_host(ctx, FLX_I64, 2, shape, x + batch * seq);
    free(x);
    return *tokens && *targets ? FLX_OK : flx_last_status();
}

int main(int argc, char **argv) {
    bool small = false, eager = false, random_tokens = false, dtype_set = false;
    int want = -1; /* -1: the model's default device, 0 cpu, 1 cuda */
    int64_t batch = -1, seq = -1;
    int steps = -1, every = -1;
    double lr = -1;
    flx_dtype dt = FLX_F32;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--small")) small = true;
        else if (!strcmp(a, "--cpu")) want = 0;
        else if (!strcmp(a, "--cuda")) want = 1;
        else if (!strcmp(a, "--eager")) eager = true;
        else if (!strcmp(a, "--random")) random_tokens = true;
        else if (!strcmp(a, "--dtype") && v && parse_dtype(v, &dt) == 0) dtype_set = true, i++;
        else if (!strcmp(a, "--batch") && v) batch = atoll(argv[++i]);
        else if (!strcmp(a, "--seq") && v) seq = atoll(argv[++i]);
        else if (!strcmp(a, "--steps") && v) steps = atoi(argv[++i]);
        else if (!strcmp(a, "--every") && v) every = atoi(argv[++i]);
        else if (!strcmp(a, "--lr") && v) lr = atof(argv[++i]);
        else return usage(argv[0]);
    }
    if (!dtype_set && small) dt = FLX_BF16;
    if (want < 0) want = small;
    if (small) random_tokens = true;
    gpt2_config cfg = small ? gpt2_config_small(dt) : gpt2_config_tiny(dt);
    if (batch < 0) batch = 8;
    if (seq < 0) seq = cfg.max_seq;
    if (steps < 0) steps = small ? 20 : 150;
    if (every < 0) every = small ? 5 : 25;
    gpt2_adamw hp = gpt2_adamw_defaults();
    if (!small) hp.lr = 1e-2; /* a tiny model on a tiny pattern learns fast with a large step */
    if (lr > 0) hp.lr = lr;
    if (batch < 1 || seq < 1 || seq > cfg.max_seq || steps < 1 || every < 1) return usage(argv[0]);

    flx_ctx *ctx = flx_ctx_create(want ? flx_device_cuda(0) : flx_device_cpu());
    if (!ctx) {
        fprintf(stderr, "gpt2: cannot create a %s context: %s\n", want ? "CUDA" : "CPU", flx_last_error());
        return 1;
    }
    gpt2_model m;
    flx_status st = gpt2_init(&m, ctx, &cfg, 1234, &hp);
    if (st != FLX_OK) {
        fprintf(stderr, "gpt2: %s\n", gpt2_error());
        flx_ctx_destroy(ctx);
        return 1;
    }
    printf("gpt2: %s model, %lld parameters (vocab %lld padded to %lld), %d layers, %d heads, %lld "
           "channels, %s on %s, batch %lld x %lld, AdamW lr %g, %s, %s tokens\n",
           small ? "GPT-2 small" : "tiny", (long long)gpt2_n_weights(&cfg), (long long)cfg.vocab,
           (long long)cfg.padded_vocab, (int)cfg.n_layer, (int)cfg.n_head, (long long)cfg.channels,
           flx_dtype_name(dt), want ? "cuda:0" : "cpu", (long long)batch, (long long)seq, hp.lr,
           eager ? "eager steps" : "one plan per step", random_tokens ? "uniform random" : "repeating");

    int rc = 0;
    flx_tensor *tokens = NULL, *targets = NULL;
    st = random_tokens ? gpt2_synthetic_batch(ctx, &cfg, batch, seq, 7, &tokens, &targets)
                       : pattern_batch(ctx, &cfg, batch, seq, &tokens, &targets);
    flx_plan *plan = NULL;
    double t0 = ex_now_s(), first = NAN, last = NAN, t_first = 0;
    if (st == FLX_OK && !eager) {
        plan = gpt2_compile_step(&m, tokens, targets, FLX_PLAN_CAPTURE_DEFAULT);
        if (!plan) st = FLX_ERR_INVALID_ARGUMENT;
        else printf("gpt2: step compiled in %.2f s\n", ex_now_s() - t0);
    }
    flx_tensor *loss_t = plan ? flx_plan_output(plan, 0) : NULL;
    for (int s = 1; s <= steps && st == FLX_OK; s++) {
        bool report = s == 1 || s % every == 0 || s == steps;
        double loss = NAN;
        if (plan) {
            st = flx_plan_run(plan, 0, NULL);
            if (st == FLX_OK && report) st = flx_item(loss_t, &loss); /* waits for the device */
        } else {
            st = gpt2_step_eager(&m, tokens, targets, report ? &loss : NULL);
        }
        if (st != FLX_OK) break;
        if (s == 1) first = loss, t_first = ex_now_s(); /* the first step pays the warm-up: untimed */
        if (report) {
            last = loss;
            printf("step %4d  loss %.4f\n", s, loss);
            fflush(stdout);
        }
    }
    if (st == FLX_OK) st = flx_ctx_synchronize(ctx);
    if (st != FLX_OK) {
        fprintf(stderr, "gpt2: %s\n", plan ? flx_last_error() : gpt2_error());
        rc = 1;
    } else {
        double per_step = steps > 1 ? (ex_now_s() - t_first) / (steps - 1) : NAN;
        double tok_s = (double)(batch * seq) / per_step;
        printf("gpt2: loss %.4f -> %.4f; %.4f s per step after the first, %.0f tokens/s", first, last,
               per_step, tok_s);
        double peak = want ? gpt2_peak_bf16_flops() : 0;
        if (peak > 0 && steps > 1)
            printf(", MFU %.3f (model flops %.4g per token, peak %.1f TFLOP/s bf16 dense)",
                   gpt2_flops_per_token(&cfg, seq) * tok_s / peak, gpt2_flops_per_token(&cfg, seq), peak / 1e12);
        printf("\n");
        if (!random_tokens && !(last < first - 0.5)) {
            fprintf(stderr, "gpt2: the loss did not fall on the repeating pattern\n");
            rc = 1;
        }
    }
    flx_release(loss_t);
    flx_plan_destroy(plan);
    flx_release(tokens);
    flx_release(targets);
    gpt2_destroy(&m);
    if (flx_ctx_destroy(ctx) != FLX_OK) {
        fprintf(stderr, "gpt2: %s\n", flx_last_error());
        rc = 1;
    }
    return rc;
}
