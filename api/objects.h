/* objects.h: JSON codecs of the API objects (OpenAI's shapes, see
 * /work/shared/OPENAI-API.md) and id generation.
 *
 * Every obj_* encoder returns a new reference (NULL only when out of
 * memory). Time fields are Unix seconds; absent values are JSON null. */
#ifndef DT_API_OBJECTS_H
#define DT_API_OBJECTS_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>

#include "db.h"


/* "ft:<base>:<owner>:<suffix>:<job_id>" and, for step > 0,
 * "...:ckpt-step-<step>". suffix may be "" (two colons in a row, as
 * OpenAI writes it). When base is itself a fine-tuned model or checkpoint
 * id ("ft:..."), <base> is its original base (obj_ft_original_base), so a
 * continued fine-tune reads "ft:<original>:..." and never "ft:ft:...".
 * DT_EINVAL if out (DB_MODEL_ID_LEN) is too short. */
int obj_ft_model_id(const char *base, const char *owner, const char *suffix,
                    const char *job_id, long step, char *out, size_t outlen);

/* The original base named by a model id: id itself unless it has the
 * shape "ft:<base>:<owner>:<suffix>:<job_id>[:ckpt-step-<n>]", then <base>
 * (owner, suffix and job id never hold ':', so the fields are taken from
 * the right and a base with ':' in its name stays whole). Writes into out;
 * DT_EINVAL if outlen is too short. */
int obj_ft_original_base(const char *id, char *out, size_t outlen);

/* The id of a job's results file (its step metrics as CSV, served by the
 * server from the job's metrics events): "ftjob-<hex>" -> "file-<hex>".
 * DT_EINVAL when job_id is not a job id or out is short. */
int obj_result_file_id(const char *job_id, char *out, size_t outlen);

/* file: {id, object:"file", bytes, created_at, filename, purpose, status,
 * status_details, expires_at, sha256} */
json_t *obj_file(const db_file *f);

/* fine_tuning.job with method {type, <type>:{hyperparameters}}, the legacy
 * hyperparameters view {n_epochs, batch_size, learning_rate_multiplier}
 * (learning_rate / 2e-4), progress, trained_tokens, error (null or
 * {code, message, param}), metadata, result_files, fine_tuned_model and the
 * deltatune extensions (cancel_requested, pause_requested, attempt). */
json_t *obj_job(const db_job *j);

/* fine_tuning.job.event: {id:"ftevent-<seq>", object, created_at, level,
 * message, type, data} */
json_t *obj_event(const db_event *e);

/* fine_tuning.job.checkpoint: {id, object, created_at,
 * fine_tuned_model_checkpoint, fine_tuning_job_id, step_number, metrics} */
json_t *obj_checkpoint(const db_checkpoint *c);

/* model: {id, object:"model", created, owned_by} (+ kind, parent, job). */
json_t *obj_model(const db_model *m);

/* {object:"list", data, has_more, first_id, last_id}; steals data (an
 * array of objects with "id"). */
/* A model export: {id, object "model.export", model, format, type, status,
 * file, bytes, error, created_at, finished_at}. */
json_t *obj_export(const db_export *x);
json_t *obj_list(json_t *data, bool has_more);

/* Parses "ftevent-<n>" into n (> 0). DT_EINVAL otherwise. */
int obj_event_seq(const char *id, int64_t *seq);

#endif
