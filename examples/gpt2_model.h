/* gpt2_model.h — a GPT-2 language model (pre-LN transformer) and its AdamW training step, written
 * over fluxion's public API only. One home for the model: the example (examples/gpt2.c), the
 * benchmark (benchmarks/bench_gpt2.c) and the test (tests/test_gpt2.cc) all build it from here.
 * defines: gpt2_config, gpt2_model, gpt2_adamw and the gpt2_* functions below.
 *
 * The network, for tokens (B, T) with T <= max_seq, C channels, H heads of D = C / H:
 *   x = wte[tokens] + wpe[0..T)                                   (B, T, C)
 *   per layer:  a = ln_1(x);  qkv = a qkv_w^T + qkv_b              (B, T, 3C), q | k | v
 *               x = x + flx_attention(q, k, v, causal) proj_w^T + proj_b   (heads (B, H, T, D))
 *               m = ln_2(x);  x = x + gelu(m fc_w^T + fc_b) fcproj_w^T + fcproj_b   (fc: 4C)
 *   logits = ln_f(x) wte^T                                         (B, T, padded_vocab), tied
 *   loss = mean cross-entropy(logits, targets)                     (fused flx_cross_entropy)
 * Weights are PyTorch/llm.c layouts ((out, in) for linear layers). GELU is the exact (erf) form
 * (GPT-2 used the tanh approximation; the PyTorch peer of the benchmark uses the same exact form).
 * The vocabulary is padded (GPT-2's 50257 to 50304, a multiple of 128, as llm.c does) so the
 * output GEMM has aligned sizes; unlike llm.c the padding columns are not masked out of the
 * softmax: they are classes no target uses (their logits are learned down), which changes nothing
 * in the cost of a step.
 *
 * Initialisation as GPT-2: weights N(0, 0.02), the two residual projections of each block
 * (proj_w, fcproj_w) N(0, 0.02 / sqrt(2 n_layer)), biases 0, layer-norm gains 1; values from
 * fluxion's counter-based Philox generator (parameter i uses seed + i), so a CPU and a CUDA model
 * of one seed start equal (up to the last bit of the f32 normal transform).
 *
 * Training: AdamW (PyTorch's rule) in two optimisers: the 2-d weights (embeddings and linear
 * weights) with weight decay, the 1-d parameters (biases, layer-norm gains) without, as GPT-2 /
 * llm.c do. bf16 parameters rely on the optimisers' f32 master weights (and moments).
 *
 * Every function returns FLX_OK / a tensor, or an error status / NULL; gpt2_error() then says why
 * (a check of this file, or fluxion's flx_last_error of the call that failed). None aborts. */
#ifndef FLX_EXAMPLES_GPT2_MODEL_H
#define FLX_EXAMPLES_GPT2_MODEL_H

#include <stdbool.h>
#include <stdint.h>

#include "fluxion/fluxion.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct gpt2_config {
    int64_t vocab;        /* token ids in [0, vocab)                                    */
    int64_t padded_vocab; /* rows of wte = logit columns, >= vocab                      */
    int64_t max_seq;      /* rows of wpe: the longest sequence                          */
    int32_t n_layer;
    int32_t n_head;
    int64_t channels;     /* C, a multiple of n_head                                     */
    flx_dtype dtype;      /* parameters and activations: f32, f64 or bf16 (f16 would need
                             loss scaling, which this model does not wire)               */
} gpt2_config;

/* GPT-2 small (124M): vocab 50257 padded to 50304, 1024 positions, 12 layers, 12 heads, 768. */
gpt2_config gpt2_config_small(flx_dtype dt);
/* A tiny model for CPU tests and the default example: vocab 64, 16 positions, 2 layers, 2 heads,
 * 32 channels. */
gpt2_config gpt2_config_tiny(flx_dtype dt);
/* FLX_OK, or FLX_ERR_INVALID_ARGUMENT / FLX_ERR_DTYPE with gpt2_error() naming the bad field. */
flx_status gpt2_config_check(const gpt2_config *cfg);
/* Why the last failing gpt2_* call of this thread failed ("" if none has). */
const char *gpt2_error(void);

/* Parameters per layer, and their order inside a layer (after wte, wpe). */
enum {
    GPT2_LN1_W, GPT2_LN1_B, GPT2_QKV_W, GPT2_QKV_B, GPT2_PROJ_W, GPT2_PROJ_B,
    GPT2_LN2_W, GPT2_LN2_B, GPT2_FC_W, GPT2_FC_B, GPT2_FCPROJ_W, GPT2_FCPROJ_B,
    GPT2_PER_LAYER
};
/* Number of parameter tensors: wte, wpe, GPT2_PER_LAYER per layer, ln_f gain and bias. */
int32_t gpt2_n_tensors(const gpt2_config *cfg);
/* Index of layer l's parameter `which` (GPT2_LN1_W ...) in the parameter list. Index 0 is wte,
 * 1 wpe, gpt2_n_tensors - 2 and - 1 are ln_f's gain and bias. */
int32_t gpt2_param_index(int32_t layer, int32_t which);
/* Shape of parameter i (ndim 1 or 2 into shape[2]); returns ndim, or -1 for a bad i. */
int32_t gpt2_param_shape(const gpt2_config *cfg, int32_t i, int64_t shape[2]);
/* Number of scalars in all parameters (the N of 6 N flops per token; padded vocab included). */
int64_t gpt2_n_weights(const gpt2_config *cfg);
/* Model flops of one token of a training step at sequence length T (PaLM / nanoGPT):
 * 6 N + 12 n_layer T C (forward + backward; the attention term counts the full T x T scores). */
double gpt2_flops_per_token(const gpt2_config *cfg, int64_t seq);

/* The dense bf16 tensor-core peak of CUDA device 0 in flop/s, the denominator of the model flops
 * utilisation (MFU): 989.4e12 for an H100/H200 SXM (sm_90 with 132 SMs; NVIDIA's datasheet figure
 * without sparsity), scaled by the SM count for other sm_90 parts; 0 when unknown (no GPU, or
 * not sm_90). */
double gpt2_peak_bf16_flops(void);

typedef struct gpt2_adamw {
    double lr, beta1, beta2, eps, weight_decay;
} gpt2_adamw;
/* GPT-2 / llm.c values: lr 6e-4, betas (0.9, 0.95), eps 1e-8, weight decay 0.1. */
gpt2_adamw gpt2_adamw_defaults(void);

typedef struct gpt2_model {
    gpt2_config cfg;
    flx_ctx *ctx;
    int32_t n_params;
    flx_tensor **params;  /* leaves that require grad, in the order above              */
    flx_optim *opt[2];    /* AdamW: [0] 2-d weights (with decay), [1] 1-d (none)         */
} gpt2_model;

/* Creates the parameters on ctx (seeded as above) and the two optimisers. *m is zeroed first;
 * on failure whatever was made is released. Call outside any scope or keep the scope open for
 * the model's life (the parameters are released by gpt2_destroy). */
flx_status gpt2_init(gpt2_model *m, flx_ctx *ctx, const gpt2_config *cfg, uint64_t seed,
                     const gpt2_adamw *hp);
/* Releases the optimisers and parameters (NULL-safe, idempotent). */
void gpt2_destroy(gpt2_model *m);

/* The logits (B, T, padded_vocab) of tokens (B, T) (i32/i64) with params[0 .. n_tensors) (the
 * model's, or substitutes of the same shapes and dtype). */
flx_tensor *gpt2_logits(const gpt2_config *cfg, flx_tensor *const *params, flx_tensor *tokens);
/* The mean cross-entropy (0-d) of the next-token targets (B, T) (i32/i64, ids < vocab). */
flx_tensor *gpt2_loss(const gpt2_config *cfg, flx_tensor *const *params, flx_tensor *tokens,
                      flx_tensor *targets);

/* One eager training step: loss, flx_backward, both AdamW steps, gradients cleared. *loss_out
 * (may be NULL: then nothing waits for the device) receives the loss before the update. */
flx_status gpt2_step_eager(gpt2_model *m, flx_tensor *tokens, flx_tensor *targets, double *loss_out);
/* The whole training step (forward, backward, both AdamW updates) as one plan with inputs
 * (tokens, targets) and output 0 the loss; capture as flx_plan_options.capture. tokens and
 * targets must be source tensors (flx_from_host). NULL with the error set on failure. */
flx_plan *gpt2_compile_step(gpt2_model *m, flx_tensor *tokens, flx_tensor *targets, int32_t capture);

/* Synthetic next-token data: a (B, T + 1) stream of token ids uniform in [0, vocab) from
 * splitmix64(seed) (value i of the stream: splitmix64 output i, modulo vocab; the PyTorch peer of
 * the benchmark draws the same ids), tokens = the first T, targets = the last T of each row; i64
 * source tensors on ctx. */
flx_status gpt2_synthetic_batch(flx_ctx *ctx, const gpt2_config *cfg, int64_t batch, int64_t seq,
                                uint64_t seed, flx_tensor **tokens, flx_tensor **targets);

#ifdef __cplusplus
}
#endif

#endif
