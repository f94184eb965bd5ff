/* objects.c: API objects as JSON (OpenAI's shapes). */
#include "objects.h"

#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "auth.h"
#include "validate.h"

int obj_ft_original_base(const char *id, char *out, size_t outlen)
{
    size_t len = strlen(id);
    const char *start = id;
    if (!strncmp(id, "ft:", 3)) {
        size_t end = len;
        /* An optional ":ckpt-step-<digits>" tail. */
        const char *t = strstr(id, ":ckpt-step-");
        if (t && t[11] && strspn(t + 11, "0123456789") == strlen(t + 11))
            end = (size_t)(t - id);
        /* Then the job id, suffix and owner, from the right. */
        int fields = 0;
        size_t i = end, job = 0;
        while (i > 3 && fields < 3)
            if (id[--i] == ':' && ++fields == 1)
                job = i + 1;
        if (fields == 3 && i > 3 && !strncmp(id + job, "ftjob-", 6)) {
            start = id + 3;
            len = i - 3;
        }
    }
    if (len + 1 > outlen) return DT_EINVAL;
    memcpy(out, start, len);
    out[len] = '\0';
    return 0;
}

int obj_ft_model_id(const char *base, const char *owner, const char *suffix,
                    const char *job_id, long step, char *out, size_t outlen)
{
    int n;
    char orig[DB_MODEL_ID_LEN];
    if (obj_ft_original_base(base, orig, sizeof orig)) return DT_EINVAL;
    base = orig;
    if (step > 0)
        n = snprintf(out, outlen, "ft:%s:%s:%s:%s:ckpt-step-%ld", base, owner,
                     suffix ? suffix : "", job_id, step);
    else
        n = snprintf(out, outlen, "ft:%s:%s:%s:%s", base, owner,
                     suffix ? suffix : "", job_id);
    return (n < 0 || (size_t)n >= outlen) ? DT_EINVAL : 0;
}

int obj_result_file_id(const char *job_id, char *out, size_t outlen)
{
    if (!job_id || strncmp(job_id, "ftjob-", 6) || !job_id[6]) return DT_EINVAL;
    int n = snprintf(out, outlen, "file-%s", job_id + 6);
    return (n < 0 || (size_t)n >= outlen) ? DT_EINVAL : 0;
}

/* A new reference: the string, or null when empty. */
static json_t *str_or_null(const char *s)
{
    return (s && s[0]) ? json_string(s) : json_null();
}

static json_t *time_or_null(int64_t t)
{
    return t > 0 ? json_integer(t) : json_null();
}

static json_t *num_or_null(double x)
{
    return isfinite(x) ? json_real(x) : json_null();
}

/* Parses stored JSON text; fallback (stolen) when NULL or unparsable. */
static json_t *parse_or(const char *text, json_t *fallback)
{
    if (!text) return fallback;
    json_t *v = json_loads(text, JSON_DECODE_ANY, NULL);
    if (!v) return fallback;
    json_decref(fallback);
    return v;
}

json_t *obj_file(const db_file *f)
{
    return json_pack("{s:s, s:s, s:I, s:I, s:s, s:s, s:s, s:o, s:o, s:s, s:I}",
                     "id", f->id, "object", "file", "bytes", (json_int_t)f->bytes,
                     "created_at", (json_int_t)f->created_at, "filename", f->filename,
                     "purpose", f->purpose, "status", f->status,
                     "status_details", str_or_null(f->status_details),
                     "expires_at", time_or_null(f->expires_at),
                     "sha256", f->sha256, "lines", (json_int_t)f->nlines);
}

static json_t *job_hparams(const db_job *j)
{
    json_t *h = json_pack("{s:i, s:i, s:f, s:s, s:i, s:f, s:i, s:i, s:i, s:i, s:I}",
                          "n_epochs", j->n_epochs, "batch_size", j->batch_size,
                          "learning_rate", j->learning_rate,
                          "lr_scheduler", j->lr_scheduler,
                          "warmup_steps", j->warmup_steps,
                          "weight_decay", j->weight_decay,
                          "seq_len", j->seq_len,
                          "gradient_accumulation_steps", j->grad_accum,
                          "max_steps", j->max_steps,
                          "checkpoint_interval", j->checkpoint_interval,
                          "seed", (json_int_t)j->seed);
    if (!h) return NULL;
    json_object_set_new(h, "max_grad_norm", json_real(j->max_grad_norm));
    json_object_set_new(h, "eval_interval", json_integer(j->eval_interval));
    json_object_set_new(h, "export_dtype",
                        json_string(j->export_dtype[0] ? j->export_dtype : "auto"));
    json_object_set_new(h, "precision", json_string(j->precision[0] ? j->precision : "auto"));
    json_object_set_new(h, "packing", json_boolean(j->packing));
    if (strcmp(j->method, "full")) {
        json_object_set_new(h, "rank", json_integer(j->rank));
        json_object_set_new(h, "alpha", json_real(j->alpha));
        json_object_set_new(h, "target_modules", json_string(j->target_modules));
    }
    if (!strcmp(j->method, "delta_lora")) {
        json_object_set_new(h, "lambda", json_real(j->lambda));
        json_object_set_new(h, "start_step", j->start_step < 0
                                                 ? json_string("auto")
                                                 : json_integer(j->start_step));
    }
    return h;
}

json_t *obj_job(const db_job *j)
{
    const db_progress *p = &j->progress;
    json_t *err = j->error_code[0] || j->error_message[0]
        ? json_pack("{s:s, s:s, s:o}", "code", j->error_code, "message",
                    j->error_message, "param", str_or_null(j->error_param))
        : json_null();
    json_t *method = json_pack("{s:s, s:{s:o}}", "type", j->method, j->method,
                               "hyperparameters", job_hparams(j));
    json_t *legacy = json_pack("{s:i, s:f, s:i}", "batch_size", j->batch_size,
                               "learning_rate_multiplier",
                               j->learning_rate / VALIDATE_DEFAULT_LR,
                               "n_epochs", j->n_epochs);
    json_t *progress = json_pack("{s:I, s:I, s:f, s:o, s:o, s:f, s:o}",
                                 "step", (json_int_t)p->step,
                                 "total_steps", (json_int_t)p->total_steps,
                                 "epoch", p->epoch,
                                 "train_loss", num_or_null(p->train_loss),
                                 "valid_loss", num_or_null(p->valid_loss),
                                 "tokens_per_second", p->tokens_per_second,
                                 "eta_seconds", num_or_null(p->eta_seconds));
    json_t *estimated = json_null();
    if (!strcmp(j->status, "running") && isfinite(p->eta_seconds) && p->eta_seconds >= 0 &&
        j->updated_at > 0)
        estimated = json_integer(j->updated_at + (json_int_t)p->eta_seconds);
    json_t *result_files = json_array();
    char results_id[DB_ID_LEN];
    if (!strcmp(j->status, "succeeded") &&
        !obj_result_file_id(j->id, results_id, sizeof results_id))
        json_array_append_new(result_files, json_string(results_id));
    json_t *o = json_pack(
        "{s:s, s:s, s:I, s:s, s:s, s:s, s:o, s:o, s:o, s:s, s:o, s:o, s:o, s:I,"
        " s:o, s:o, s:o, s:o, s:[], s:o, s:o, s:b, s:b, s:i}",
        "id", j->id, "object", "fine_tuning.job",
        "created_at", (json_int_t)j->created_at, "model", j->model,
        "organization_id", j->owner, "status", j->status,
        "fine_tuned_model", str_or_null(j->fine_tuned_model),
        "finished_at", time_or_null(j->finished_at),
        "estimated_finish", estimated,
        "training_file", j->training_file,
        "validation_file", str_or_null(j->validation_file),
        "result_files", result_files,
        "trained_tokens", p->trained_tokens > 0 || !strcmp(j->status, "succeeded")
                              ? json_integer(p->trained_tokens) : json_null(),
        "seed", (json_int_t)j->seed,
        "error", err, "hyperparameters", legacy, "method", method,
        "progress", progress, "integrations",
        "metadata", parse_or(j->metadata, json_null()),
        "user_provided_suffix", str_or_null(j->suffix),
        "cancel_requested", j->cancel_requested,
        "pause_requested", j->pause_requested,
        "attempt", j->attempt);
    if (o) /* null: the server's DELTATUNE_MAX_RUNTIME_SECONDS applies */
        json_object_set_new(o, "max_runtime_seconds", j->max_runtime_seconds > 0
                                    ? json_integer(j->max_runtime_seconds) : json_null());
    return o;
}

json_t *obj_event(const db_event *e)
{
    char id[40];
    snprintf(id, sizeof id, "ftevent-%" PRId64, e->seq);
    return json_pack("{s:s, s:s, s:I, s:s, s:s, s:s, s:o}", "id", id,
                     "object", "fine_tuning.job.event",
                     "created_at", (json_int_t)e->created_at, "level", e->level,
                     "message", e->message, "type", e->type,
                     "data", parse_or(e->data, json_null()));
}

int obj_event_seq(const char *id, int64_t *seq)
{
    if (!id || strncmp(id, "ftevent-", 8)) return DT_EINVAL;
    const char *s = id + 8;
    if (!*s || strlen(s) > 18) return DT_EINVAL;
    int64_t v = 0;
    for (; *s; s++) {
        if (*s < '0' || *s > '9') return DT_EINVAL;
        v = v * 10 + (*s - '0');
    }
    if (v <= 0) return DT_EINVAL;
    *seq = v;
    return 0;
}

json_t *obj_checkpoint(const db_checkpoint *c)
{
    json_t *metrics = parse_or(c->metrics, json_object());
    if (!json_is_object(metrics)) {
        json_decref(metrics);
        metrics = json_object();
    }
    json_object_set_new(metrics, "step", json_integer(c->step));
    return json_pack("{s:s, s:s, s:I, s:s, s:s, s:I, s:o}", "id", c->id,
                     "object", "fine_tuning.job.checkpoint",
                     "created_at", (json_int_t)c->created_at,
                     "fine_tuned_model_checkpoint", c->model_id,
                     "fine_tuning_job_id", c->job_id,
                     "step_number", (json_int_t)c->step, "metrics", metrics);
}

json_t *obj_model(const db_model *m)
{
    return json_pack("{s:s, s:s, s:I, s:s, s:s, s:o, s:o, s:o}", "id", m->id,
                     "object", "model", "created", (json_int_t)m->created_at,
                     "owned_by", m->owner[0] ? m->owner : "deltatune",
                     "kind", m->kind, "parent", str_or_null(m->base),
                     "job", str_or_null(m->job_id),
                     "step", m->step > 0 ? json_integer(m->step) : json_null());
}

json_t *obj_export(const db_export *x)
{
    int done = !strcmp(x->status, "succeeded");
    return json_pack("{s:s, s:s, s:s, s:s, s:s, s:s, s:s, s:o, s:o, s:I, s:o}", "id", x->id,
                     "object", "model.export", "model", x->model_id, "format", x->format,
                     "type", x->type, "status", x->status, "file", x->file,
                     "bytes", done ? json_integer(x->bytes) : json_null(),
                     "error", str_or_null(x->error), "created_at", (json_int_t)x->created_at,
                     "finished_at", time_or_null(x->finished_at));
}

json_t *obj_list(json_t *data, bool has_more)
{
    size_t n = json_array_size(data);
    json_t *first = n ? json_object_get(json_array_get(data, 0), "id") : NULL;
    json_t *last = n ? json_object_get(json_array_get(data, n - 1), "id") : NULL;
    return json_pack("{s:s, s:o, s:b, s:O, s:O}", "object", "list", "data", data,
                     "has_more", has_more, "first_id", first ? first : json_null(),
                     "last_id", last ? last : json_null());
}
