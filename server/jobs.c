/* jobs.c: /v1/fine_tuning/jobs: create (validated, admitted against the
 * owner's limits (usage.c), then INSERT and a wake-up on Redis; a Redis
 * outage only delays the job: the reconciler and the workers' polling find
 * it), list, retrieve, cancel/pause/resume, events and checkpoints. */
#include <dirent.h>
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "api/log.h"
#include "api/objects.h"
#include "api/validate.h"
#include "handlers.h"
#include "base/id.h"
#include "gpu/engine_api.h"

/* The most optimizer steps a job may have: the engine's step counters and
 * checkpoint names stay far from any 32- or 64-bit overflow. */
#define MAX_TOTAL_STEPS 2147483647LL

/* Checks a file the job refers to: the owner's, processed, for fine-tuning.
 * *nlines (may be NULL) gets its row count. */
static int check_file(req *r, db *d, const char *id, const char *param, long *nlines)
{
    char err[DT_ERR_LEN];
    db_file f;
    int rc = db_file_get(d, r->owner, id, &f, err);
    if (rc == DB_ENOTFOUND) {
        reply_error(r, 400, "file_not_found", param, "%s: no such file: %.64s", param, id);
        return -1;
    }
    if (rc) { reply_db(r, rc, err); return -1; }
    if (f.expires_at > 0 && f.expires_at <= (int64_t)time(NULL)) {
        reply_error(r, 400, "file_expired", param, "%s: %s has expired (expires_after)", param,
                    id);
        return -1;
    }
    if (strcmp(f.purpose, "fine-tune")) {
        reply_error(r, 400, "invalid_file", param, "%s: %s was not uploaded with purpose "
                    "fine-tune", param, id);
        return -1;
    }
    if (strcmp(f.status, "processed")) {
        reply_error(r, 400, "invalid_file", param, "%s: %s is not valid JSONL: %.500s", param,
                    id, f.status_details);
        return -1;
    }
    if (nlines) *nlines = f.nlines;
    return 0;
}

/* The job's limits that depend on the server and the data: its runtime
 * within the server's ceiling (filled in when absent), and a total step
 * count that cannot overflow (n_epochs x rows / (batch_size x
 * gradient_accumulation_steps) when max_steps does not decide). hp: the
 * field path of the hyperparameters. 0 or -1 after replying 400. */
static int check_limits(req *r, db_job *j, long rows, const char *hp)
{
    int max_rt = r->s->cfg.max_runtime_seconds;
    if (j->max_runtime_seconds > max_rt) {
        reply_error(r, 400, "invalid_value", "max_runtime_seconds",
                    "max_runtime_seconds must be between 1 and %d (this server's limit); got %d",
                    max_rt, j->max_runtime_seconds);
        return -1;
    }
    if (j->max_runtime_seconds <= 0) j->max_runtime_seconds = max_rt;
    if (j->max_steps > 0) return 0;
    long long per_step = (long long)j->batch_size * (j->grad_accum > 0 ? j->grad_accum : 1);
    __int128 visits = (__int128)j->n_epochs * (rows > 0 ? rows : 0);
    __int128 total = (visits + per_step - 1) / per_step;
    if (total > MAX_TOTAL_STEPS) {
        char param[160];
        snprintf(param, sizeof param, "%s.n_epochs", hp);
        reply_error(r, 400, "invalid_value", param,
                    "%s: %d epochs of %ld training rows at batch_size %d x "
                    "gradient_accumulation_steps %d are %lld optimizer steps, more than the "
                    "limit of %lld: lower n_epochs, raise batch_size, or set max_steps",
                    param, j->n_epochs, rows, j->batch_size, j->grad_accum,
                    (long long)total, MAX_TOTAL_STEPS);
        return -1;
    }
    return 0;
}

/* Memory admission: 400 when live workers are registered and none of their
 * budgets (memory limit minus what the worker holds itself, migration 0002)
 * could hold the job's estimate. The estimate reads only the model's config
 * numbers (gpu/engine_api.h) and sizes activations by seq_len: the data's
 * longest row is not known here, so this is the larger bound; the worker
 * checks again with the data. Each kind of device is estimated as it would
 * train the job: on a CUDA worker with the precision the job resolves to
 * there (bf16 frozen weights for "bf16" and "auto", as on an sm_80+ GPU; a
 * worker on an older GPU checks again), on a CPU worker in fp32 unless the
 * job asks for bf16. No worker registered, one without a recorded limit, or
 * a model whose header cannot be read: the job is accepted (it queues, as
 * before). Activation checkpointing counts as the worker chooses it by
 * default (auto): on when the job does not fit a worker otherwise. Returns -1
 * after replying. */
static int check_memory(req *r, db *d, const db_job *j, const db_model *m)
{
    char err[DT_ERR_LEN] = "", path[DB_PATH_LEN];
    int n = 0;
    bool unlimited = false;
    int64_t budget_cpu = 0, budget_gpu = 0;
    int live_s = r->s->cfg.lease_seconds * 2 > 30 ? r->s->cfg.lease_seconds * 2 : 30;
    int rc = db_workers_memory(d, live_s, &n, &unlimited, &budget_cpu, &budget_gpu, err);
    if (rc) {
        log_msg(DT_LOG_WARN, "jobs.admission", "%s (job accepted unchecked)", err);
        return 0;
    }
    if (n == 0 || unlimited)
        return 0;
    dt_mem_model mm;
    if (config_artifact_path(&r->s->cfg, m->path, path, sizeof path) ||
        dt_mem_model_read(path, &mm, err)) {
        log_msg(DT_LOG_WARN, "jobs.admission", "model %s: %s (job accepted unchecked)",
                j->model, err);
        return 0;
    }
    int method = !strcmp(j->method, "full") ? 0 : !strcmp(j->method, "lora") ? 1 : 2;
    int seq = j->seq_len;
    if (!mm.llama && mm.max_pos > 0 && seq > mm.max_pos)
        seq = mm.max_pos; /* the worker trains a GPT-2 at most at its positions */
    int asks_bf16 = !strcmp(j->precision, "bf16");
    int auto_prec = !j->precision[0] || !strcmp(j->precision, "auto");
    /* [0] a CPU worker, [1] a CUDA worker */
    int64_t budget[2] = {budget_cpu, budget_gpu}, need = 0, have = 0;
    for (int gpu = 0; gpu < 2; gpu++) {
        if (budget[gpu] <= 0)
            continue;
        dt_mem_job mj = {method, j->rank, j->target_modules[0] ? j->target_modules : NULL,
                         j->batch_size, seq, 0, 0, gpu, 1, 0, j->packing, 0};
        dt_mem_estimate e;
        /* the worker's default: activation checkpointing when the job does
         * not fit the worker otherwise (--activation-checkpointing auto) */
        if (dt_mem_estimate_auto_ckpt(&mm, &mj, asks_bf16 || (gpu && auto_prec), budget[gpu],
                                      &e, NULL, err))
            return 0; /* impossible settings: validation answered those */
        if (e.total <= budget[gpu])
            return 0;
        if (!need || budget[gpu] > have) {
            need = e.total;
            have = budget[gpu];
        }
    }
    if (!need)
        return 0;
    char param[128], hneed[32], hhave[32];
    const char *t = j->method_input[0] ? j->method_input : j->method;
    snprintf(param, sizeof param, "method.%s.hyperparameters.batch_size", t);
    if (!j->method_input[0] && !t[0])
        snprintf(param, sizeof param, "hyperparameters.batch_size");
    dt_mem_human(need, hneed, sizeof hneed);
    dt_mem_human(have, hhave, sizeof hhave);
    reply_error(r, 400, "insufficient_memory", param,
                "%s: the job needs about %lld bytes (%s) of memory for batch_size %d x "
                "seq_len %d, more than any registered worker can hold (the largest holds "
                "%lld bytes, %s); lower hyperparameters.batch_size or seq_len%s%s",
                param, (long long)need, hneed, j->batch_size, seq, (long long)have, hhave,
                method == 0 ? ", or use method lora instead of full"
                            : ", rank or target_modules",
                budget_gpu > 0 && !asks_bf16 && !auto_prec
                    ? ", or use precision bf16 (frozen weights at 2 bytes)" : "");
    return -1;
}

void jobs_create(req *r)
{
    char err[DT_ERR_LEN];
    api_error e;
    db_job j;
    json_t *body = req_json(r);
    if (!body) return;
    int rc = validate_job_create(body, &j, &e);
    /* where the client gave the hyperparameters, for error params */
    char hp[96] = "hyperparameters";
    json_t *method = json_object_get(body, "method");
    if (!rc && method && !json_is_null(method))
        snprintf(hp, sizeof hp, "method.%.16s.hyperparameters", j.method_input);
    json_decref(body);
    if (rc) { reply_apierr(r, &e); db_job_clear(&j); return; }
    db *d = req_db(r);
    if (!d) goto out;
    db_model m;
    /* Scoped to the owner: another owner's model (checkpoints included)
     * reads as one that does not exist. A checkpoint trains from its merged
     * model, which the worker builds (worker/models.c). */
    rc = db_model_get(d, r->owner, j.model, &m, err);
    if (rc == DB_ENOTFOUND) {
        reply_error(r, 400, "model_not_found", "model",
                    "model %.200s does not exist; GET /v1/models lists the models", j.model);
        goto out;
    }
    if (rc) { reply_db(r, rc, err); goto out; }
    /* The memory estimate reads the architecture: a checkpoint has its
     * base's. */
    db_model arch = m;
    for (int hop = 0; hop < 16 && !strcmp(arch.kind, "checkpoint"); hop++) {
        char up[sizeof arch.base];
        snprintf(up, sizeof up, "%s", arch.base);
        rc = db_model_get(d, r->owner, up, &arch, err);
        if (rc == DB_ENOTFOUND) {
            reply_error(r, 400, "model_not_found", "model", "the base model %.200s of "
                        "checkpoint %.200s no longer exists", up, j.model);
            goto out;
        }
        if (rc) { reply_db(r, rc, err); goto out; }
    }
    long rows = 0;
    if (check_file(r, d, j.training_file, "training_file", &rows)) goto out;
    if (j.validation_file[0] && check_file(r, d, j.validation_file, "validation_file", NULL))
        goto out;
    if (check_limits(r, &j, rows, hp)) goto out;
    if (check_memory(r, d, &j, &arch)) goto out;
    snprintf(j.owner, sizeof j.owner, "%s", r->owner);
    if (dt_id_new("ftjob-", j.id, sizeof j.id)) {
        reply_error(r, 500, "internal_error", NULL, "no randomness");
        goto out;
    }
    snprintf(j.output_dir, sizeof j.output_dir, "jobs/%s", j.id);
    j.max_attempts = r->s->cfg.max_attempts;
    /* The owner's limits, counted and the job inserted under the owner's
     * lock, so concurrent requests cannot both take the last slot. */
    rc = db_owner_lock(d, r->owner, err);
    if (rc) { reply_db(r, rc, err); goto out; }
    if (usage_admit_job(r, d)) { db_owner_unlock(d, r->owner); goto out; }
    rc = db_job_create(d, &j, err);
    db_owner_unlock(d, r->owner);
    if (rc) { reply_db(r, rc, err); goto out; }
    if (queue_publish(r->s->q, j.id, err))
        log_msg(DT_LOG_WARN, "queue.publish", "%s: %s (the reconciler will retry)", j.id, err);
    db_job_clear(&j);
    rc = db_job_get(d, r->owner, j.id, &j, err);
    if (rc) { reply_db(r, rc, err); goto out; }
    log_msg(DT_LOG_INFO, "jobs.created", "%s owner=%s method=%s model=%s", j.id, j.owner,
            j.method, j.model);
    reply_json(r, 200, obj_job(&j));
out:
    db_job_clear(&j);
}

/* metadata[k]=v query arguments -> a JSON object text (NULL = none). */
typedef struct meta_ctx { json_t *o; int bad; } meta_ctx;

static enum MHD_Result meta_arg(void *cls, enum MHD_ValueKind kind, const char *key,
                                const char *value)
{
    meta_ctx *m = cls;
    size_t n = strlen(key);
    if (strncmp(key, "metadata[", 9) || n < 11 || key[n - 1] != ']') return MHD_YES;
    if (n - 10 > 64) { m->bad = 1; return MHD_YES; }
    char k[80];
    memcpy(k, key + 9, n - 10);
    k[n - 10] = 0;
    json_object_set_new(m->o, k, json_string(value ? value : ""));
    return MHD_YES;
}

void jobs_list(req *r)
{
    char err[DT_ERR_LEN];
    int limit;
    if (http_parse_limit(req_query(r, "limit"), 20, 100, &limit)) {
        reply_error(r, 400, "invalid_value", "limit", "limit must be an integer 1-100");
        return;
    }
    meta_ctx m = {json_object(), 0};
    MHD_get_connection_values(r->conn, MHD_GET_ARGUMENT_KIND, meta_arg, &m);
    if (m.bad) {
        json_decref(m.o);
        reply_error(r, 400, "invalid_value", "metadata", "metadata keys are at most 64 characters");
        return;
    }
    char *filter = json_object_size(m.o) ? json_dumps(m.o, JSON_COMPACT) : NULL;
    json_decref(m.o);
    db *d = req_db(r);
    if (!d) { free(filter); return; }
    db_job *js = NULL;
    int n = 0;
    bool more = false;
    int rc = db_job_list(d, r->owner, req_query(r, "after"), limit, filter, &js, &n, &more, err);
    free(filter);
    if (rc) { reply_db(r, rc, err); return; }
    json_t *data = json_array();
    for (int i = 0; i < n; i++) json_array_append_new(data, obj_job(&js[i]));
    db_job_array_free(js, n);
    reply_json(r, 200, obj_list(data, more));
}

void jobs_get(req *r)
{
    char err[DT_ERR_LEN];
    db *d = req_db(r);
    if (!d) return;
    db_job j;
    int rc = db_job_get(d, r->owner, r->params[0], &j, err);
    if (rc) { reply_db(r, rc, err); return; }
    reply_json(r, 200, obj_job(&j));
    db_job_clear(&j);
}

/* Retention for a job cancelled while queued or paused (no worker ends it):
 * its checkpoints keep their weights, not their optimizer state
 * (<output>/checkpoints/step-N/optimizer.safetensors, gpu/train.h). */
static void drop_training_state(req *r, const db_job *j)
{
    char dir[PATH_MAX], p[PATH_MAX + 300];
    if (config_artifact_path(&r->s->cfg, j->output_dir, dir, sizeof dir) ||
        strlen(dir) + sizeof "/checkpoints" > sizeof dir)
        return;
    strcat(dir, "/checkpoints");
    DIR *d = opendir(dir);
    if (!d) return;
    for (struct dirent *e; (e = readdir(d));) {
        if (strncmp(e->d_name, "step-", 5)) continue;
        snprintf(p, sizeof p, "%s/%.255s/optimizer.safetensors", dir, e->d_name);
        if (unlink(p) && errno != ENOENT)
            log_msg(DT_LOG_WARN, "job.retention_failed", "%s: %s", p, strerror(errno));
    }
    closedir(d);
}

static void transition(req *r, int (*fn)(db *, const char *, const char *, db_job *, char *),
                       int publish)
{
    char err[DT_ERR_LEN];
    db *d = req_db(r);
    if (!d) return;
    db_job j;
    int rc = fn(d, r->owner, r->params[0], &j, err);
    if (rc == DB_ECONFLICT) {
        reply_error(r, 409, "invalid_state", NULL, "%s", err);
        return;
    }
    if (rc) { reply_db(r, rc, err); return; }
    if (!strcmp(j.status, "cancelled")) drop_training_state(r, &j);
    if (publish && !strcmp(j.status, "queued") && queue_publish(r->s->q, j.id, err))
        log_msg(DT_LOG_WARN, "queue.publish", "%s: %s (the reconciler will retry)", j.id, err);
    reply_json(r, 200, obj_job(&j));
    db_job_clear(&j);
}

void jobs_cancel(req *r) { transition(r, db_job_cancel, 0); }
void jobs_pause(req *r) { transition(r, db_job_pause, 0); }
void jobs_resume(req *r) { transition(r, db_job_resume, 1); }

void jobs_events(req *r)
{
    char err[DT_ERR_LEN];
    int limit;
    int64_t after = 0;
    if (http_parse_limit(req_query(r, "limit"), 20, 1000, &limit)) {
        reply_error(r, 400, "invalid_value", "limit", "limit must be an integer 1-1000");
        return;
    }
    const char *a = req_query(r, "after");
    if (a && obj_event_seq(a, &after)) {
        reply_error(r, 400, "invalid_value", "after", "after must be an event id (ftevent-N)");
        return;
    }
    db *d = req_db(r);
    if (!d) return;
    db_event *es = NULL;
    int n = 0;
    bool more = false;
    int rc = db_event_list(d, r->owner, r->params[0], after, limit, &es, &n, &more, err);
    if (rc) { reply_db(r, rc, err); return; }
    json_t *data = json_array();
    for (int i = 0; i < n; i++) json_array_append_new(data, obj_event(&es[i]));
    db_event_array_free(es, n);
    reply_json(r, 200, obj_list(data, more));
}

void jobs_checkpoints(req *r)
{
    char err[DT_ERR_LEN];
    int limit;
    if (http_parse_limit(req_query(r, "limit"), 10, 100, &limit)) {
        reply_error(r, 400, "invalid_value", "limit", "limit must be an integer 1-100");
        return;
    }
    db *d = req_db(r);
    if (!d) return;
    db_checkpoint *cs = NULL;
    int n = 0;
    bool more = false;
    int rc = db_checkpoint_list(d, r->owner, r->params[0], req_query(r, "after"), limit, &cs,
                                &n, &more, err);
    if (rc) { reply_db(r, rc, err); return; }
    json_t *data = json_array();
    for (int i = 0; i < n; i++) json_array_append_new(data, obj_checkpoint(&cs[i]));
    db_checkpoint_array_free(cs, n);
    reply_json(r, 200, obj_list(data, more));
}
