/* validate.h: the fine-tuning job create body (POST /v1/fine_tuning/jobs).
 *
 * Fields: required model, training_file; optional validation_file, method,
 * hyperparameters (legacy), suffix, seed, metadata, integrations (accepted
 * and ignored), max_runtime_seconds (>= 1; the server checks it against
 * DELTATUNE_MAX_RUNTIME_SECONDS and fills that in when absent, 0 here). method.type is delta_lora | lora | full | supervised
 * ("supervised" and the legacy hyperparameters map onto delta_lora, the
 * default method). Hyperparameters, with "auto" (or absence) resolving to the
 * defaults below; their limits are base/hparams.c's table (one table for the
 * API, the engine and the OpenAPI contract):
 *
 *   name                         default
 *   n_epochs                     3
 *   batch_size                   4
 *   learning_rate                2e-4
 *   learning_rate_multiplier     (m: learning_rate = m * 2e-4)
 *   rank                         8
 *   alpha                        16
 *   lambda                       0.5
 *   start_step                   -1 (10% of the steps)
 *   target_modules               "q,v" (string or array of q,k,v,o,gate,up,
 *                                down,c_attn and the *_proj names)
 *   seq_len                      256
 *   warmup_steps                 0
 *   weight_decay                 0
 *   max_grad_norm                1.0 (0 = off)
 *   lr_scheduler                 linear (linear|cosine|constant)
 *   gradient_accumulation_steps  1
 *   max_steps                    0 (the epochs decide)
 *   checkpoint_interval          0 (the worker chooses)
 *   eval_interval                0 (the worker chooses)
 *   seed                         42 (a top-level seed wins)
 *
 * rank/alpha/lambda/start_step/target_modules are LoRA parameters: "full"
 * rejects them; lambda/start_step are Delta-LoRA's: "lora" rejects them.
 * Errors are 400 with param naming the exact path, e.g.
 * "method.delta_lora.hyperparameters.rank"; unknown fields are 400 naming
 * the field. */
#ifndef DT_API_VALIDATE_H
#define DT_API_VALIDATE_H

#include <jansson.h>

#include "db.h"
#include "errors.h"

#define VALIDATE_DEFAULT_LR 2e-4 /* learning_rate_multiplier 1.0 */
/* The default seq_len; the worker lowers it to a model with fewer positions
 * (an explicit seq_len beyond them fails the job). */
#define VALIDATE_DEFAULT_SEQ_LEN 256

/* Fills *j (ids, owner, status excepted) from body. 0 or the HTTP status
 * (400) with e filled. j->metadata is malloc'd on success (db_job_clear). */
int validate_job_create(json_t *body, db_job *j, api_error *e);

/* metadata: object of <= 16 string values, keys <= 64, values <= 512
 * characters. param names the field path ("metadata" or "metadata.<key>"). */
int validate_metadata(json_t *md, const char *param, api_error *e);

/* POST /v1/models/{id}/exports: {"format": "gguf", "type": "f16" | "q8_0" |
 * "q4_0"} ("type" defaults to "f16"; other keys are refused). Fills
 * x->format and x->type; 400 naming the field otherwise. */
int validate_export_create(json_t *body, db_export *x, api_error *e);

#endif
