/* generate.h: incremental decoding with a KV cache per layer. The prompt is
 * prefilled in one pass, then each new token is one pass over one row that
 * appends its keys and values to the cache; logits are computed for the
 * last position only. Greedy (temperature 0) or temperature / top-p
 * sampling from a seed; stops at EOS, a stop string or max tokens. */
#ifndef DT_GENERATE_H
#define DT_GENERATE_H

#include <stdint.h>
#include <jansson.h>

#include "model.h"
#include "tokenizer.h"

typedef struct dt_decoder dt_decoder;

/* A decoder for model m (borrowed; its weights and LoRA factors are used,
 * its activations are not) holding up to max_T positions. */
int dt_decoder_new(dt_model *m, int max_T, dt_decoder **out, char *err);
void dt_decoder_free(dt_decoder *d);
/* Empties the cache (a new sequence). */
void dt_decoder_reset(dt_decoder *d);
/* Positions in the cache. */
int dt_decoder_len(const dt_decoder *d);
/* Runs t tokens at the next positions, appending to the cache, and writes
 * the logits (V) of the last one to host memory when `logits` != NULL. */
int dt_decoder_feed(dt_decoder *d, const int32_t *ids, int t, float *logits,
                    char *err);

/* One decode step for n sequences at once (continuous batching): ids[i]
 * is the next token of ds[i] (each a decoder of the same model with at
 * least one position in its cache, each at most once), fed at its own next
 * position; the linear layers run as one GEMM over the n rows, attention
 * per sequence over its own cache. logits (n, V) in host memory when not
 * NULL: row i is ds[i]'s, as dt_decoder_feed(ds[i], &ids[i], 1) gives it
 * up to rounding. The activations of the decoder with the most rows serve
 * as scratch; larger batches run in chunks of them. */
int dt_decoder_step_batch(dt_decoder *const *ds, int n, const int32_t *ids,
                          float *logits, char *err);
/* Prefills n sequences at once: ids[i] (t[i] tokens) are fed to ds[i] at
 * its next positions, as dt_decoder_feed(ds[i], ids[i], t[i]) would (up to
 * rounding), with whole prompts stacked into chunks of rows so that the
 * linears read each weight once per chunk, not once per prompt (a prompt
 * longer than a chunk runs alone). logits (n, V) in host memory when not
 * NULL: row i is the logits of ds[i]'s last new position. */
int dt_decoder_feed_batch(dt_decoder *const *ds, int n, const int32_t *const *ids,
                          const int *t, float *logits, char *err);

/* A LoRA adapter applied while decoding over a base model that stays
 * shared: y = x·Wᵀ + s·(x·Aᵀ)·Bᵀ in each adapted linear, s = lora_alpha / r,
 * so that several fine-tunes of one base (lora, and delta_lora's exact
 * rank-2r adapter) hold the base's weights once. Each decoder may carry its
 * own adapter; a batched step may mix adapters over one base. */
typedef struct dt_decoder_adapter dt_decoder_adapter;
/* Loads the PEFT adapter in dir (adapter_config.json,
 * adapter_model.safetensors; gpu/export.h dt_peft_load) onto the device for
 * model m (borrowed, loaded from w: names and config). DT_EFORMAT when a
 * tensor matches no linear of m or has the wrong shape. */
int dt_decoder_adapter_load(dt_model *m, const dt_weights *w, const char *dir,
                            dt_decoder_adapter **out, char *err);
void dt_decoder_adapter_free(dt_decoder_adapter *a);
/* Device bytes of the adapter's factors. */
long long dt_decoder_adapter_bytes(const dt_decoder_adapter *a);
/* The adapter d's sequence runs with from its next feed or step (borrowed;
 * NULL: the base alone). Adapter and decoder belong to the same model. */
void dt_decoder_set_adapter(dt_decoder *d, const dt_decoder_adapter *a);

typedef struct dt_gen_opts {
    int max_tokens;      /* new tokens at most */
    float temperature;   /* 0: greedy (argmax, lowest id on ties) */
    float top_p;         /* nucleus sampling, (0, 1]; 1 = off */
    uint64_t seed;
    int32_t eos;         /* -1: none */
    const char *const *stop; /* NULL-terminated stop strings, or NULL */
    const dt_tokenizer *tok; /* needed for stop strings */
} dt_gen_opts;

/* Generates after prompt ids(n) from an empty cache: *out (malloc'd, *nout
 * ids, EOS not included), *finish = "stop" (EOS or a stop string) or
 * "length". A stop string is cut from the output ids' text by the caller
 * (the ids up to and including the token that completed it are returned).
 * `step_logits`, when not NULL, is called with each step's logits. */
typedef void (*dt_gen_logits_fn)(void *ud, int step, const float *logits,
                                 int V);
int dt_generate(dt_decoder *d, const int32_t *prompt, int n,
                const dt_gen_opts *o, int32_t **out, int *nout,
                const char **finish, dt_gen_logits_fn fn, void *ud,
                char *err);

/* Picks the next token from logits(V) (modified: turned into
 * probabilities when sampling). rng: the sampler state. */
int32_t dt_sample(float *logits, int V, float temperature, float top_p,
                  uint64_t *rng);

/* The prompt ids of a chat for generation, rendered as training renders
 * chat rows (dataset.c) with the assistant's turn opened: the model's own
 * chat template with add_generation_prompt true (and bos_token /
 * eos_token), template text encoded with control tokens recognised and
 * message content without; else ChatML when the tokenizer has <|im_start|>
 * and <|im_end|> ("<|im_start|>assistant\n" last); else the plain template
 * ("### Assistant:\n" last). BOS first in the last two when the tokenizer
 * has one distinct from its EOS. messages: an array of {"role", "content"}
 * with string content (borrowed). *ids is malloc'd. DT_EINVAL names the
 * template's error. */
int dt_chat_prompt(const dt_tokenizer *tok, const json_t *messages,
                   int32_t **ids, int *n, char *err);

/* The token that ends an assistant turn besides EOS (<|im_end|>,
 * <|eot_id|>, <end_of_turn>), or -1. */
int32_t dt_chat_end_token(const dt_tokenizer *tok);

#endif
