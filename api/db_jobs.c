/* db_jobs.c: jobs (create, read, user transitions), the worker protocol
 * (claim, heartbeat, progress, finish, requeue: fenced by (id, attempt)),
 * and the rescuer and reconciler queries. A job's events are in
 * db_events.c, its checkpoints in db_checkpoints.c. */
#include "db_internal.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "objects.h"

const char *const db_job_status_names[7] = {
#define X(s) #s,
    DB_JOB_STATUSES
#undef X
};

int db_job_status_index(const char *status)
{
    for (int i = 0; i < 7; i++)
        if (!strcmp(status, db_job_status_names[i])) return i;
    return -1;
}

/* Reads the 54 JOB_COLS of db_sql.c. */
static int job_row(const PGresult *r, int i, db_job *j)
{
    int c = 0;
    memset(j, 0, sizeof *j);
    dbr_str(r, i, c++, j->id, sizeof j->id);
    dbr_str(r, i, c++, j->owner, sizeof j->owner);
    dbr_str(r, i, c++, j->model, sizeof j->model);
    dbr_str(r, i, c++, j->training_file, sizeof j->training_file);
    dbr_str(r, i, c++, j->validation_file, sizeof j->validation_file);
    dbr_str(r, i, c++, j->suffix, sizeof j->suffix);
    dbr_str(r, i, c++, j->status, sizeof j->status);
    dbr_str(r, i, c++, j->method, sizeof j->method);
    dbr_str(r, i, c++, j->method_input, sizeof j->method_input);
    j->n_epochs = (int)dbr_int(r, i, c++);
    j->batch_size = (int)dbr_int(r, i, c++);
    j->learning_rate = dbr_dbl(r, i, c++);
    j->rank = (int)dbr_int(r, i, c++);
    j->alpha = dbr_dbl(r, i, c++);
    j->lambda = dbr_dbl(r, i, c++);
    j->start_step = (int)dbr_int(r, i, c++);
    dbr_str(r, i, c++, j->target_modules, sizeof j->target_modules);
    j->seq_len = (int)dbr_int(r, i, c++);
    j->warmup_steps = (int)dbr_int(r, i, c++);
    j->weight_decay = dbr_dbl(r, i, c++);
    j->max_grad_norm = dbr_dbl(r, i, c++);
    dbr_str(r, i, c++, j->lr_scheduler, sizeof j->lr_scheduler);
    j->grad_accum = (int)dbr_int(r, i, c++);
    j->max_steps = (int)dbr_int(r, i, c++);
    j->checkpoint_interval = (int)dbr_int(r, i, c++);
    j->eval_interval = (int)dbr_int(r, i, c++);
    j->seed = dbr_int(r, i, c++);
    j->attempt = (int)dbr_int(r, i, c++);
    j->retries = (int)dbr_int(r, i, c++);
    j->max_attempts = (int)dbr_int(r, i, c++);
    j->lease_expires_at = dbr_int(r, i, c++);
    dbr_str(r, i, c++, j->worker_id, sizeof j->worker_id);
    j->cancel_requested = dbr_bool(r, i, c++);
    j->pause_requested = dbr_bool(r, i, c++);
    dbr_str(r, i, c++, j->error_code, sizeof j->error_code);
    dbr_str(r, i, c++, j->error_message, sizeof j->error_message);
    dbr_str(r, i, c++, j->error_param, sizeof j->error_param);
    dbr_str(r, i, c++, j->output_dir, sizeof j->output_dir);
    dbr_str(r, i, c++, j->fine_tuned_model, sizeof j->fine_tuned_model);
    j->progress.step = dbr_int(r, i, c++);
    j->progress.total_steps = dbr_int(r, i, c++);
    j->progress.epoch = dbr_dbl(r, i, c++);
    j->progress.train_loss = dbr_dbl(r, i, c++);
    j->progress.valid_loss = dbr_dbl(r, i, c++);
    j->progress.tokens_per_second = dbr_dbl(r, i, c++);
    j->progress.eta_seconds = dbr_dbl(r, i, c++);
    j->progress.trained_tokens = dbr_int(r, i, c++);
    j->metadata = dbr_dup(r, i, c++);
    j->created_at = dbr_int(r, i, c++);
    j->started_at = dbr_int(r, i, c++);
    j->finished_at = dbr_int(r, i, c++);
    j->updated_at = dbr_int(r, i, c++);
    j->max_runtime_seconds = (int)dbr_int(r, i, c++);
    dbr_str(r, i, c++, j->export_dtype, sizeof j->export_dtype);
    dbr_str(r, i, c++, j->precision, sizeof j->precision);
    j->packing = dbr_bool(r, i, c++);
    return (PQgetisnull(r, i, 47) || j->metadata) ? 0 : DT_ENOMEM;
}

void db_job_clear(db_job *j)
{
    if (!j) return;
    free(j->metadata);
    j->metadata = NULL;
}

void db_job_array_free(db_job *a, int n)
{
    if (!a) return;
    for (int i = 0; i < n; i++) db_job_clear(&a[i]);
    free(a);
}

/* Runs a statement that returns at most one job row into *out. */
static int job_one(db *d, db_stmt stmt, const db_params *p, db_job *out,
                   int *found, char *err)
{
    PGresult *r;
    *found = 0;
    int rc = db_exec(d, stmt, p, &r, err);
    if (rc) return rc;
    if (PQntuples(r) == 1) {
        rc = job_row(r, 0, out);
        *found = !rc;
    }
    PQclear(r);
    return rc;
}

typedef struct job_create_arg { const db_job *j; } job_create_arg;

static int job_create_tx(db *d, void *arg, char *err)
{
    const db_job *j = ((job_create_arg *)arg)->j;
    db_params p = {0};
    dbp_str(&p, j->id);
    dbp_str(&p, j->owner);
    dbp_str(&p, j->model);
    dbp_str(&p, j->training_file);
    dbp_str(&p, j->validation_file);
    dbp_str(&p, j->suffix);
    dbp_str(&p, j->method);
    dbp_str(&p, j->method_input[0] ? j->method_input : j->method);
    dbp_int(&p, j->n_epochs);
    dbp_int(&p, j->batch_size);
    dbp_dbl(&p, j->learning_rate);
    dbp_int(&p, j->rank);
    dbp_dbl(&p, j->alpha);
    dbp_dbl(&p, j->lambda);
    dbp_int(&p, j->start_step);
    dbp_str(&p, j->target_modules);
    dbp_int(&p, j->seq_len);
    dbp_int(&p, j->warmup_steps);
    dbp_dbl(&p, j->weight_decay);
    dbp_dbl(&p, j->max_grad_norm);
    dbp_str(&p, j->lr_scheduler);
    dbp_int(&p, j->grad_accum);
    dbp_int(&p, j->max_steps);
    dbp_int(&p, j->checkpoint_interval);
    dbp_int(&p, j->eval_interval);
    dbp_int(&p, j->seed);
    dbp_int(&p, j->max_attempts > 0 ? j->max_attempts : 3);
    dbp_str(&p, j->output_dir);
    dbp_str(&p, j->metadata);
    dbp_int(&p, j->max_runtime_seconds > 0 ? j->max_runtime_seconds : 0);
    dbp_str(&p, j->export_dtype);
    dbp_str(&p, j->precision);
    dbp_bool(&p, j->packing);
    int rc = db_exec(d, STMT_JOB_CREATE, &p, NULL, err);
    if (rc) return rc;
    char msg[512];
    snprintf(msg, sizeof msg, "Created fine-tuning job: %s (%s on %s)", j->id, j->method,
             j->model);
    return db_event_add(d, j->id, -1, "info", "message", msg, NULL, err);
}

int db_job_create(db *d, const db_job *j, char *err)
{
    job_create_arg a = {j};
    return db_tx(d, job_create_tx, &a, err);
}

int db_job_get(db *d, const char *owner, const char *id, db_job *out, char *err)
{
    db_params p = {0};
    int found;
    dbp_str(&p, id);
    dbp_nstr(&p, owner);
    int rc = job_one(d, STMT_JOB_GET, &p, out, &found, err);
    if (!rc && !found) rc = dt_errf(err, DB_ENOTFOUND, "no such job: %s", id);
    return rc;
}

int db_job_list(db *d, const char *owner, const char *after, int limit,
                const char *meta_filter, db_job **out, int *n, bool *has_more, char *err)
{
    db_params p = {0};
    PGresult *r;
    *out = NULL;
    *n = 0;
    *has_more = false;
    dbp_str(&p, owner);
    dbp_nstr(&p, after);
    dbp_nstr(&p, meta_filter);
    dbp_int(&p, limit + 1);
    int rc = db_exec(d, STMT_JOB_LIST, &p, &r, err);
    if (rc) return rc;
    int m = PQntuples(r);
    if (m > limit) { *has_more = true; m = limit; }
    db_job *a = calloc((size_t)m + 1, sizeof *a);
    if (!a) rc = dt_errf(err, DT_ENOMEM, "out of memory");
    int k = 0;
    for (; !rc && k < m; k++) rc = job_row(r, k, &a[k]);
    PQclear(r);
    if (rc) {
        db_job_array_free(a, k);
        return rc;
    }
    *out = a;
    *n = m;
    return 0;
}

/* A user transition: the UPDATE, or why it did not apply. */
static int transition(db *d, db_stmt stmt, const char *verb, const char *owner,
                      const char *id, db_job *out, char *err)
{
    db_params p = {0};
    int found;
    dbp_str(&p, id);
    dbp_str(&p, owner);
    int rc = job_one(d, stmt, &p, out, &found, err);
    if (rc || found) return rc;
    rc = db_job_get(d, owner, id, out, err);
    if (rc) return rc;
    if (!strcmp(out->status, "running") && out->cancel_requested)
        rc = dt_errf(err, DB_ECONFLICT, "cannot %s job %s: it is being cancelled", verb, id);
    else
        rc = dt_errf(err, DB_ECONFLICT, "cannot %s job %s: its status is %s", verb, id,
                     out->status);
    db_job_clear(out);
    return rc;
}

int db_job_cancel(db *d, const char *owner, const char *id, db_job *out, char *err)
{
    int rc = transition(d, STMT_JOB_CANCEL, "cancel", owner, id, out, err);
    if (!rc)
        db_event_add(d, id, -1, "info", "message",
                     !strcmp(out->status, "cancelled") ? "Job cancelled"
                                                       : "Cancellation requested", NULL, err);
    return rc;
}

int db_job_pause(db *d, const char *owner, const char *id, db_job *out, char *err)
{
    int rc = transition(d, STMT_JOB_PAUSE, "pause", owner, id, out, err);
    if (!rc)
        db_event_add(d, id, -1, "info", "message",
                     !strcmp(out->status, "paused") ? "Job paused" : "Pause requested",
                     NULL, err);
    return rc;
}

int db_job_resume(db *d, const char *owner, const char *id, db_job *out, char *err)
{
    int rc = transition(d, STMT_JOB_RESUME, "resume", owner, id, out, err);
    if (!rc) db_event_add(d, id, -1, "info", "message", "Job resumed", NULL, err);
    return rc;
}

/* ---- worker protocol ---------------------------------------------------------- */

int db_job_claim(db *d, const char *worker_id, int lease_s, const char *job_id,
                 db_job *out, char *err)
{
    /* job_id (a queue wake-up) is only a hint: fair claiming decides which
     * job runs, so a burst of one owner's wake-ups cannot jump the queue. */
    (void)job_id;
    db_params p = {0};
    int found;
    dbp_str(&p, worker_id);
    dbp_int(&p, lease_s);
    int rc = job_one(d, STMT_JOB_CLAIM, &p, out, &found, err);
    if (rc) return rc;
    if (!found) return DB_ENOTFOUND;
    char msg[300];
    snprintf(msg, sizeof msg, "Attempt %d started on worker %s", out->attempt, worker_id);
    db_event_add(d, out->id, out->attempt, "info", "message", msg, NULL, err);
    return 0;
}

static int flags_result(db *d, db_stmt stmt, const db_params *p, bool *cancel,
                        bool *pause, char *err)
{
    PGresult *r;
    int rc = db_exec(d, stmt, p, &r, err);
    if (rc) return rc;
    if (PQntuples(r) == 1) {
        if (cancel) *cancel = dbr_bool(r, 0, 0);
        if (pause) *pause = dbr_bool(r, 0, 1);
    } else {
        rc = dt_errf(err, DB_ELEASE, "lease lost on job %s", p->v[0]);
    }
    PQclear(r);
    return rc;
}

int db_job_heartbeat(db *d, const char *id, int attempt, int lease_s,
                     bool *cancel_requested, bool *pause_requested, char *err)
{
    db_params p = {0};
    dbp_str(&p, id);
    dbp_int(&p, attempt);
    dbp_int(&p, lease_s);
    return flags_result(d, STMT_JOB_HEARTBEAT, &p, cancel_requested, pause_requested, err);
}

int db_job_progress(db *d, const char *id, int attempt, int lease_s,
                    const db_progress *g, bool *cancel_requested,
                    bool *pause_requested, char *err)
{
    db_params p = {0};
    dbp_str(&p, id);
    dbp_int(&p, attempt);
    dbp_int(&p, lease_s);
    dbp_int(&p, g->step);
    dbp_int(&p, g->total_steps);
    dbp_dbl(&p, isfinite(g->epoch) ? g->epoch : 0);
    dbp_dbl(&p, g->train_loss);
    dbp_dbl(&p, g->valid_loss);
    dbp_dbl(&p, isfinite(g->tokens_per_second) ? g->tokens_per_second : 0);
    dbp_dbl(&p, g->eta_seconds);
    dbp_int(&p, g->trained_tokens);
    return flags_result(d, STMT_JOB_PROGRESS, &p, cancel_requested, pause_requested, err);
}

/* Locks the job row when (id, attempt) still holds the lease (db_internal.h). */
int db_job_fence(db *d, const char *id, int attempt, char *owner, char *model,
                 char *suffix, char *err)
{
    db_params p = {0};
    PGresult *r;
    dbp_str(&p, id);
    dbp_int(&p, attempt);
    int rc = db_exec(d, STMT_JOB_FENCE, &p, &r, err);
    if (rc) return rc;
    if (PQntuples(r) == 1) {
        dbr_str(r, 0, 0, owner, DB_OWNER_LEN);
        dbr_str(r, 0, 1, model, 256);
        dbr_str(r, 0, 2, suffix, 65);
    } else {
        rc = dt_errf(err, DB_ELEASE, "lease lost on job %s (attempt %d)", id, attempt);
    }
    PQclear(r);
    return rc;
}

typedef struct finish_arg { const char *id; int attempt; const db_finish *f; } finish_arg;

static int finish_tx(db *d, void *arg, char *err)
{
    finish_arg *a = arg;
    const db_finish *f = a->f;
    char owner[DB_OWNER_LEN], model[256], suffix[65];
    int rc = db_job_fence(d, a->id, a->attempt, owner, model, suffix, err);
    if (rc) return rc;
    /* The row is locked now: the flags read here are the last word of the
     * API (a cancel or resume after the worker's last look at them). */
    db_job cur;
    rc = db_job_get(d, NULL, a->id, &cur, err);
    if (rc) return rc;
    bool cancel = cur.cancel_requested, pause = cur.pause_requested;
    db_job_clear(&cur);
    const char *status = f->status;
    if (cancel)
        status = "cancelled";
    else if (pause && !strcmp(status, "succeeded"))
        status = "paused";
    else if (!pause && !strcmp(status, "paused"))
        status = "queued";
    if (f->final_status) snprintf(f->final_status, 16, "%s", status);
    bool ok = !strcmp(status, "succeeded"), failed = !strcmp(status, "failed");
    db_params p = {0};
    dbp_str(&p, a->id);
    dbp_int(&p, a->attempt);
    dbp_str(&p, status);
    dbp_str(&p, failed && f->error_code ? f->error_code : "");
    dbp_str(&p, failed && f->error_message ? f->error_message : "");
    dbp_str(&p, failed && f->error_param ? f->error_param : "");
    dbp_nstr(&p, ok ? f->fine_tuned_model : NULL);
    rc = db_exec(d, STMT_JOB_FINISH, &p, NULL, err);
    if (rc) return rc;
    if (ok && f->fine_tuned_model && f->fine_tuned_model[0]) {
        db_model m = {0};
        snprintf(m.id, sizeof m.id, "%s", f->fine_tuned_model);
        snprintf(m.kind, sizeof m.kind, "fine_tuned");
        snprintf(m.owner, sizeof m.owner, "%s", owner);
        snprintf(m.base, sizeof m.base, "%s", model);
        snprintf(m.job_id, sizeof m.job_id, "%s", a->id);
        snprintf(m.path, sizeof m.path, "%s", f->model_path ? f->model_path : "");
        rc = db_model_put(d, &m, err);
        if (rc) return rc;
    }
    char msg[1200];
    const char *level = "info";
    if (failed) {
        level = "error";
        snprintf(msg, sizeof msg, "Job failed: %s", f->error_message ? f->error_message : "");
    } else if (ok) {
        snprintf(msg, sizeof msg, "The job has successfully completed; new model: %s",
                 f->fine_tuned_model ? f->fine_tuned_model : "");
    } else if (!strcmp(status, "queued")) {
        snprintf(msg, sizeof msg, "Resumed before the pause took effect; job requeued "
                 "from its last checkpoint");
    } else if (strcmp(status, f->status)) {
        snprintf(msg, sizeof msg, "Job %s (requested while the worker ended it as %s)",
                 status, f->status);
    } else {
        snprintf(msg, sizeof msg, "Job %s", status);
    }
    return db_event_add(d, a->id, -1, level, "message", msg, NULL, err);
}

int db_job_finish(db *d, const char *id, int attempt, const db_finish *f, char *err)
{
    if (!f || !f->status ||
        (strcmp(f->status, "succeeded") && strcmp(f->status, "failed") &&
         strcmp(f->status, "cancelled") && strcmp(f->status, "paused")))
        return dt_errf(err, DT_EINVAL, "db_job_finish: bad status");
    finish_arg a = {id, attempt, f};
    return db_tx(d, finish_tx, &a, err);
}

int db_job_requeue(db *d, const char *id, int attempt, char *err)
{
    db_params p = {0};
    PGresult *r;
    dbp_str(&p, id);
    dbp_int(&p, attempt);
    int rc = db_exec(d, STMT_JOB_REQUEUE, &p, &r, err);
    if (rc) return rc;
    if (PQntuples(r) != 1) rc = dt_errf(err, DB_ELEASE, "lease lost on job %s", id);
    PQclear(r);
    if (!rc) db_event_add(d, id, -1, "warn", "message", "Worker stopped; job requeued",
                          NULL, err);
    return rc;
}

int db_rescue_expired(db *d, int *requeued, int *failed, char *err)
{
    PGresult *r;
    *requeued = *failed = 0;
    int rc = db_exec(d, STMT_JOB_RESCUE, NULL, &r, err);
    if (rc) return rc;
    for (int i = 0; i < PQntuples(r); i++) {
        const char *s = PQgetvalue(r, i, 0);
        if (!strcmp(s, "failed")) (*failed)++;
        else if (!strcmp(s, "queued")) (*requeued)++;
    }
    PQclear(r);
    return 0;
}

int db_jobs_queued(db *d, int max, char (**out)[DB_ID_LEN], int *n, char *err)
{
    db_params p = {0};
    PGresult *r;
    *out = NULL;
    *n = 0;
    dbp_int(&p, max);
    int rc = db_exec(d, STMT_JOBS_QUEUED, &p, &r, err);
    if (rc) return rc;
    int m = PQntuples(r);
    *out = calloc((size_t)m + 1, DB_ID_LEN);
    if (!*out) rc = dt_errf(err, DT_ENOMEM, "out of memory");
    for (int i = 0; !rc && i < m; i++) dbr_str(r, i, 0, (*out)[i], DB_ID_LEN);
    if (!rc) *n = m;
    PQclear(r);
    return rc;
}

/* Reads whether job_id belongs to owner (db_internal.h). */
int db_job_owned(db *d, const char *owner, const char *job_id, char *err)
{
    db_params p = {0};
    PGresult *r;
    dbp_str(&p, job_id);
    dbp_str(&p, owner);
    int rc = db_exec(d, STMT_JOB_OWNED, &p, &r, err);
    if (rc) return rc;
    if (PQntuples(r) != 1) rc = dt_errf(err, DB_ENOTFOUND, "no such job: %s", job_id);
    PQclear(r);
    return rc;
}
