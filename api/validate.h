/* validate.h: the fine-tuning job create body (POST /v1/fine_tuning/jobs).
 *
 * Fields: required model, training_file; optional validation_file, method,
 * hyperparameters (legacy), suffix, seed, metadata, integrations (accepted
 * and ignored). method.type is delta_lora | lora | full | supervised
 * ("supervised" and the legacy hyperparameters map onto delta_lora, the
 * default method). Hyperparameters, with "auto" (or absence) resolving to the
 * defaults below:
 *
 *   name              type         range                   default
 *   n_epochs          int          1..100                  3
 *   batch_size        int          1..256                  4
 *   learning_rate     number       (0, 1]                  2e-4
 *   learning_rate_multiplier number (0, 100]  -> learning_rate = m * 2e-4
 *   rank              int          1..256                  8
 *   alpha             number       (0, 4096]               16
 *   lambda            number       [0, 100]                0.5
 *   start_step        int          -1..1e7 (-1 = 10% of steps) -1
 *   target_modules    string or array of q,k,v,o,gate,up,down,c_attn  "q,v"
 *   seq_len           int          8..8192                 256
 *   warmup_steps      int          0..1e6                  0
 *   weight_decay      number       [0, 1]                  0
 *   max_grad_norm     number       [0, 1e6] (0 = off)      1.0
 *   lr_scheduler      linear|cosine|constant               linear
 *   gradient_accumulation_steps int 1..1024               1
 *   max_steps         int          0..1e7 (0 = epochs)     0
 *   checkpoint_interval int        0..1e7 (0 = worker)     0
 *   eval_interval     int          0..1e7 (0 = worker)     0
 *   seed              int          0..2^53                 42 (top-level seed wins)
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

#endif
