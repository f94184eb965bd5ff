/* worker.c: deltatune-worker's job loop and its keeper thread (see
 * worker.h). Every write about a job after the claim is fenced by
 * (job id, attempt): DB_ELEASE means another worker or the rescuer owns the
 * job now, and this worker stops and writes nothing more for it. */
#include "worker.h"

#include <stdatomic.h>
#include <errno.h>
#include <ftw.h>
#include <math.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/stat.h>

#include "api/db.h"
#include "api/log.h"
#include "api/objects.h"
#include "api/queue.h"
#include "glue.h"
#include "gpu/engine_api.h"
#include "gpu/gguf_write.h"
#include "base/clock.h"
#include "api/sched.h"

#define PROGRESS_MIN_INTERVAL 0.5 /* seconds between progress writes (<= 2/s) */

typedef struct worker {
    const wk_opts *o;
    char hostname[256];
    db *db;                  /* main thread's connection */
    queue *q;                /* main thread's wake-up handle */

    /* The job in progress, shared with the keeper under mu. */
    pthread_mutex_t mu;
    pthread_cond_t cv;       /* wakes the keeper to quit */
    int active;
    char job_id[DB_ID_LEN];
    int attempt;
    double lease_ok_at;      /* dt_now() of the last successful lease write */
    double run_deadline;     /* dt_now() past which the attempt exceeds max_runtime_seconds */
    int keeper_quit;
    uint64_t main_qgen;      /* queue_generation(q) after the last wait */

    /* Flags for the running job, set by the keeper, the callbacks and the
     * signal handler; dt_train reads stop after every step and between
     * micro-batches: 1 (pause: stop with a checkpoint of the last completed
     * step) or WK_ABORT (cancel, SIGTERM: stop at once, write nothing). */
    atomic_int stop;         /* written by other threads and the signal handler */
    atomic_int lease_lost, cancel_req, pause_req;
    atomic_int runtime_exceeded; /* the keeper saw run_deadline pass */

    /* Per-job state of the main thread's callbacks. */
    db_job job;
    double last_write;
    db_progress last;
    int64_t started_step;
    char last_final[16];     /* the status db_job_finish set last, "" when none */
    long long memory_limit;  /* --memory-limit or its default (bytes) */
} worker;

static volatile sig_atomic_t g_shutdown;
static atomic_int *g_stop; /* the worker's stop flag, for the handler */

/* SIGTERM/SIGINT: the job in progress stops between two micro-batches,
 * drops the step in progress and goes back to the queue (it resumes from
 * its last checkpoint): nothing is written, so the worker exits at once. */
static void on_signal(int sig)
{
    (void)sig;
    g_shutdown = 1;
    if (g_stop)
        atomic_store(g_stop, WK_ABORT);
}

/* Raises the stop request to v (1 or WK_ABORT), never lowers it. */
static void stop_raise(atomic_int *stop, int v)
{
    int cur = atomic_load(stop);
    while (cur < v && !atomic_compare_exchange_weak(stop, &cur, v))
        ;
}

/* The job's cancel/pause flags as last read from its row: cancel stops at
 * once (nothing written), pause with a checkpoint of the last completed
 * step. */
static void flags_seen(worker *w, bool cancel, bool pause)
{
    if (cancel) {
        atomic_store(&w->cancel_req, 1);
        stop_raise(&w->stop, WK_ABORT);
    }
    if (pause) {
        atomic_store(&w->pause_req, 1);
        stop_raise(&w->stop, 1);
    }
}

static void flag_set(atomic_int *f)
{
    atomic_store(f, 1);
}

static int flag_get(atomic_int *f)
{
    return atomic_load(f);
}

/* ---- events --------------------------------------------------------------- */

/* Appends a fenced message event. A lost lease is recorded in the flags. */
static void job_event(worker *w, const char *level, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void job_event(worker *w, const char *level, const char *fmt, ...)
{
    char msg[1024], err[DT_ERR_LEN] = "";
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    int rc = db_event_add(w->db, w->job.id, w->job.attempt, level, "message", msg,
                          NULL, err);
    if (rc == DB_ELEASE) {
        flag_set(&w->lease_lost); /* cb_progress aborts: nothing more written */
    } else if (rc) {
        log_msg(DT_LOG_WARN, "job.event_failed", "%s: %s", w->job.id, err);
    }
}

/* ---- training callbacks (main thread, inside dt_train) ------------------------ */

static void json_num(json_t *o, const char *k, double v)
{
    if (isfinite(v))
        json_object_set_new(o, k, json_real(v));
}

static int cb_progress(void *ud, const db_progress *p, double lr, double gn)
{
    worker *w = ud;
    w->last = *p;
    if (flag_get(&w->lease_lost))
        return WK_ABORT;
    double now = dt_now();
    int due = now - w->last_write >= PROGRESS_MIN_INTERVAL || p->step == p->total_steps ||
              p->step == w->started_step + 1 || isfinite(p->valid_loss);
    if (due) {
        char err[DT_ERR_LEN] = "";
        bool c = false, pz = false;
        int rc = db_job_progress(w->db, w->job.id, w->job.attempt,
                                 w->o->cfg.lease_seconds, p, &c, &pz, err);
        if (rc == DB_ELEASE) {
            log_msg(DT_LOG_WARN, "job.lease_lost", "%s attempt %d: lease lost at step %ld",
                    w->job.id, w->job.attempt, (long)p->step);
            flag_set(&w->lease_lost);
            return WK_ABORT;
        }
        if (rc) {
            log_msg(DT_LOG_WARN, "job.progress_failed", "%s: %s", w->job.id, err);
        } else {
            w->last_write = now;
            pthread_mutex_lock(&w->mu);
            w->lease_ok_at = now;
            pthread_mutex_unlock(&w->mu);
            flags_seen(w, c, pz);
            /* The metrics event (OpenAI's type "metrics"). */
            json_t *d = json_object();
            json_object_set_new(d, "step", json_integer(p->step));
            json_object_set_new(d, "total_steps", json_integer(p->total_steps));
            json_num(d, "epoch", p->epoch);
            json_num(d, "train_loss", p->train_loss);
            json_num(d, "valid_loss", p->valid_loss);
            json_num(d, "learning_rate", lr);
            json_num(d, "grad_norm", gn);
            json_num(d, "tokens_per_second", p->tokens_per_second);
            json_num(d, "eta_seconds", p->eta_seconds);
            json_object_set_new(d, "trained_tokens", json_integer(p->trained_tokens));
            json_object_set_new(d, "peak_device_bytes", json_integer(p->peak_device_bytes));
            json_object_set_new(d, "activation_checkpointing", json_boolean(p->act_ckpt));
            char *data = json_dumps(d, JSON_COMPACT);
            json_decref(d);
            char msg[256];
            int n = snprintf(msg, sizeof msg, "Step %ld/%ld: training loss=%.4f",
                             (long)p->step, (long)p->total_steps, p->train_loss);
            if (isfinite(p->valid_loss) && n > 0 && (size_t)n < sizeof msg)
                snprintf(msg + n, sizeof msg - (size_t)n, ", validation loss=%.4f",
                         p->valid_loss);
            rc = db_event_add(w->db, w->job.id, w->job.attempt, "info", "metrics", msg,
                              data, err);
            free(data);
            if (rc == DB_ELEASE) {
                flag_set(&w->lease_lost);
                return WK_ABORT;
            }
            /* Once per attempt, after its first step: how it fits. */
            if (!rc && p->step == w->started_step + 1) {
                char pk[32];
                dt_mem_human(p->peak_device_bytes, pk, sizeof pk);
                job_event(w, "info", "Activation checkpointing %s; peak device memory "
                          "after the first step: %lld bytes (%s)",
                          p->act_ckpt ? "on (the job does not fit the worker's memory "
                                        "without it)" : "off",
                          (long long)p->peak_device_bytes, pk);
            }
        }
    }
    if (g_shutdown || flag_get(&w->cancel_req) || flag_get(&w->stop) == WK_ABORT)
        return WK_ABORT;
    return flag_get(&w->stop) || flag_get(&w->pause_req);
}

/* Right before the engine writes a checkpoint or the merged model: a fenced
 * lease renewal, so a worker that lost its job (e.g. stopped past its lease
 * and continued) writes no files into the directory the new owner uses.
 * PostgreSQL unreachable is not a loss (the keeper self-fences after a
 * whole lease without a successful write). */
static int cb_before_checkpoint(void *ud, int64_t step)
{
    worker *w = ud;
    if (flag_get(&w->lease_lost))
        return 1;
    char err[DT_ERR_LEN] = "";
    bool c = false, pz = false;
    int rc = db_job_heartbeat(w->db, w->job.id, w->job.attempt, w->o->cfg.lease_seconds,
                              &c, &pz, err);
    if (rc == DB_ELEASE) {
        log_msg(DT_LOG_WARN, "job.lease_lost", "%s attempt %d: lease lost before the "
                "checkpoint at step %lld", w->job.id, w->job.attempt, (long long)step);
        flag_set(&w->lease_lost);
        return 1;
    }
    if (rc == 0) {
        pthread_mutex_lock(&w->mu);
        w->lease_ok_at = dt_now();
        pthread_mutex_unlock(&w->mu);
        flags_seen(w, c, pz);
    }
    return 0;
}

static int cb_checkpoint(void *ud, int64_t step, const char *dir)
{
    worker *w = ud;
    if (flag_get(&w->lease_lost))
        return 1;
    char model_id[DB_MODEL_ID_LEN], stored[DB_PATH_LEN], err[DT_ERR_LEN] = "";
    const char *base = strrchr(dir, '/');
    base = base ? base + 1 : dir;
    if (obj_ft_model_id(w->job.model, w->job.owner, w->job.suffix, w->job.id, step,
                        model_id, sizeof model_id) ||
        snprintf(stored, sizeof stored, "%s/checkpoints/%s", w->job.output_dir, base) >=
            (int)sizeof stored) {
        log_msg(DT_LOG_ERROR, "job.checkpoint_failed", "%s: id or path too long", w->job.id);
        return 0;
    }
    json_t *m = json_object();
    json_object_set_new(m, "step", json_integer(step));
    if (w->last.step == step) {
        json_num(m, "train_loss", w->last.train_loss);
        json_num(m, "valid_loss", w->last.valid_loss);
        json_object_set_new(m, "trained_tokens", json_integer(w->last.trained_tokens));
    }
    char *metrics = json_dumps(m, JSON_COMPACT);
    json_decref(m);
    int rc = 0;
    for (int tries = 0; tries < 3; tries++) {
        rc = db_checkpoint_add(w->db, w->job.id, w->job.attempt, step, model_id, stored,
                               metrics, err);
        if (rc != DB_EUNAVAIL)
            break;
        sleep(1);
    }
    free(metrics);
    if (rc == DB_ELEASE) {
        flag_set(&w->lease_lost);
        return 1;
    }
    if (rc) {
        /* The files are complete; only the row is missing. Training goes on. */
        log_msg(DT_LOG_WARN, "job.checkpoint_failed", "%s step %lld: %s", w->job.id,
                (long long)step, err);
        return 0;
    }
    log_msg(DT_LOG_INFO, "job.checkpoint", "%s step %lld: %s", w->job.id, (long long)step,
            model_id);
    job_event(w, "info", "Checkpoint at step %lld: %s", (long long)step, model_id);
    return flag_get(&w->lease_lost);
}

/* ---- one job ---------------------------------------------------------------------- */

/* Ends the attempt; retries while PostgreSQL is unreachable (if it stays
 * down, the lease runs out and the rescuer re-queues the job, which then
 * resumes from its last checkpoint). db_job_finish may set another status
 * than f->status (a cancel or resume that came after the worker's last look
 * at the flags): the one set is in f->final_status, "" when none was. */
static void finish(worker *w, db_finish *f)
{
    char err[DT_ERR_LEN] = "", fs[16] = "";
    int rc = 0;
    if (!f->final_status)
        f->final_status = fs;
    f->final_status[0] = 0;
    for (int tries = 0; tries < 10; tries++) {
        rc = db_job_finish(w->db, w->job.id, w->job.attempt, f, err);
        if (rc != DB_EUNAVAIL)
            break;
        sleep(1);
    }
    if (rc == DB_ELEASE)
        log_msg(DT_LOG_WARN, "job.lease_lost", "%s: lease lost before it could end as %s",
                w->job.id, f->status);
    else if (rc)
        log_msg(DT_LOG_ERROR, "job.finish_failed", "%s -> %s: %s", w->job.id, f->status, err);
    else
        log_msg(DT_LOG_INFO, "job.finished", "%s: %s at step %ld%s%s", w->job.id,
                f->final_status, (long)w->last.step, f->error_code ? " " : "",
                f->error_code ? f->error_code : "");
    if (rc)
        f->final_status[0] = 0;
    snprintf(w->last_final, sizeof w->last_final, "%s", f->final_status);
    if (f->final_status == fs)
        f->final_status = NULL;
}

static void fail_job(worker *w, const char *code, const char *param, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static void fail_job(worker *w, const char *code, const char *param, const char *fmt, ...)
{
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    char fs[16] = "";
    db_finish f = {.status = "failed", .error_code = code, .error_message = msg,
                   .error_param = param, .final_status = fs};
    finish(w, &f);
}

/* Fails the job whose stored path does not fit under the artifact root.
 * Returns 1, resolve_inputs' "failed for the user". */
static int fail_path_too_long(worker *w)
{
    fail_job(w, "internal_error", NULL, "A stored path of this job is longer than %d "
             "bytes under the artifact root.", DB_PATH_LEN);
    return 1;
}

/* Looks up the job's training or validation file (which: "training" or
 * "validation"; id: the file's id) into path (DB_PATH_LEN bytes) and, where
 * nlines is not NULL, its line count. 0, a DB error (err says it), or 1 when
 * the job failed for the user. */
static int resolve_file(worker *w, const char *which, const char *id, char *path,
                        long *nlines, char *err)
{
    db_file f;
    int rc = db_file_get(w->db, w->job.owner, id, &f, err);
    if (rc == DB_ENOTFOUND) {
        char code[32], param[32];
        snprintf(code, sizeof code, "invalid_%s_file", which);
        snprintf(param, sizeof param, "%s_file", which);
        fail_job(w, code, param, "The %s file %s was deleted before the job ran. Upload "
                 "it again and create a new job.", which, id);
        return 1;
    }
    if (rc)
        return rc;
    if (config_artifact_path(&w->o->cfg, f.path, path, DB_PATH_LEN))
        return fail_path_too_long(w);
    if (nlines)
        *nlines = f.nlines;
    return 0;
}

/* Looks up the base model and the files of the job. 0, a DB error to retry
 * later (the job is handed back), or 1 when the job failed for the user. */
static int resolve_inputs(worker *w, char *model_path, char *train_path,
                          char *valid_path, char *out_dir, long *rows)
{
    const api_config *cfg = &w->o->cfg;
    char err[DT_ERR_LEN] = "";
    /* A checkpoint as the base: its merged model, built here if no job or
     * export built it before. */
    int rc = wk_model_dir(w->db, cfg, w->job.model, NULL, 0, model_path, DB_PATH_LEN, err);
    if (rc == DB_ENOTFOUND) {
        fail_job(w, "model_not_found", "model", "The base model %s no longer exists. "
                 "Choose one from GET /v1/models and create the job again.", w->job.model);
        return 1;
    }
    if (rc <= DB_ENOTFOUND)
        goto db_error;
    if (rc) {
        fail_job(w, "model_unavailable", "model", "The base model %s could not be "
                 "loaded: %s. Choose another model from GET /v1/models.", w->job.model, err);
        return 1;
    }
    rc = resolve_file(w, "training", w->job.training_file, train_path, rows, err);
    if (rc < 0)
        goto db_error;
    if (rc)
        return rc;
    valid_path[0] = 0;
    if (w->job.validation_file[0]) {
        rc = resolve_file(w, "validation", w->job.validation_file, valid_path, NULL, err);
        if (rc < 0)
            goto db_error;
        if (rc)
            return rc;
    }
    if (config_artifact_path(cfg, w->job.output_dir, out_dir, DB_PATH_LEN))
        return fail_path_too_long(w);
    return 0;
db_error:
    log_msg(DT_LOG_ERROR, "job.inputs_failed", "%s: %s", w->job.id, err);
    return rc;
}

/* Hands the job back to the queue (worker shutting down, or PostgreSQL
 * trouble before training started) and wakes another worker. */
static void requeue(worker *w, const char *why)
{
    char err[DT_ERR_LEN] = "";
    int rc = db_job_requeue(w->db, w->job.id, w->job.attempt, err);
    if (rc) {
        log_msg(DT_LOG_WARN, "job.requeue_failed", "%s: %s", w->job.id, err);
        return;
    }
    log_msg(DT_LOG_INFO, "job.requeued", "%s: %s", w->job.id, why);
    if (queue_publish(w->q, w->job.id, err))
        log_msg(DT_LOG_WARN, "queue.publish_failed", "%s: %s (the reconciler will retry)",
                w->job.id, err);
}

/* Removes a directory tree (best effort). */
static int rm_entry(const char *p, const struct stat *st, int flag, struct FTW *f)
{
    (void)st;
    (void)flag;
    (void)f;
    remove(p);
    return 0;
}

/* After db_job_finish set `final`: an ended job keeps no resumable
 * training state (its checkpoints keep their weights); a job that trained
 * to the end but did not succeed (cancelled or paused on its last step)
 * leaves no unlisted export behind; a job requeued because a resume came
 * after the pause is woken at once. */
static void after_finish(worker *w, const char *out_dir, const char *final, int trained)
{
    char err[DT_ERR_LEN] = "";
    if (!final[0])
        return;
    if (!strcmp(final, "succeeded") || !strcmp(final, "failed") ||
        !strcmp(final, "cancelled")) {
        int n = wk_ckpt_prune(out_dir, 0, err);
        if (n < 0)
            log_msg(DT_LOG_WARN, "job.retention_failed", "%s: %s", w->job.id, err);
        else if (n > 0)
            log_msg(DT_LOG_INFO, "job.retention", "%s: optimizer state of %d checkpoint(s) "
                    "removed", w->job.id, n);
    }
    if (trained && strcmp(final, "succeeded")) {
        static const char *const sub[] = {"merged", "adapter"};
        for (int i = 0; i < 2; i++) {
            char p[DB_PATH_LEN + 16];
            snprintf(p, sizeof p, "%s/%s", out_dir, sub[i]);
            nftw(p, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
        }
    }
    if (!strcmp(final, "queued") && queue_publish(w->q, w->job.id, err))
        log_msg(DT_LOG_WARN, "queue.publish_failed", "%s: %s (the reconciler will retry)",
                w->job.id, err);
}

static void run_job(worker *w)
{
    const wk_opts *o = w->o;
    char model_path[DB_PATH_LEN], train_path[DB_PATH_LEN], valid_path[DB_PATH_LEN];
    char out_dir[DB_PATH_LEN], err[DT_ERR_LEN] = "";
    long rows = 0;

    atomic_store(&w->stop, 0);
    atomic_store(&w->lease_lost, 0);
    atomic_store(&w->cancel_req, 0);
    atomic_store(&w->pause_req, 0);
    w->last_final[0] = 0;
    if (g_shutdown) /* a signal between the claim and the reset above */
        atomic_store(&w->stop, WK_ABORT);
    atomic_store(&w->runtime_exceeded, 0);
    /* The runtime limit: the job's own (the server checked it against its
     * ceiling), else this worker's DELTATUNE_MAX_RUNTIME_SECONDS; per attempt. */
    int max_rt = w->job.max_runtime_seconds > 0 ? w->job.max_runtime_seconds
                                                : o->cfg.max_runtime_seconds;
    pthread_mutex_lock(&w->mu);
    w->run_deadline = dt_now() + max_rt;
    w->active = 1;
    snprintf(w->job_id, sizeof w->job_id, "%s", w->job.id);
    w->attempt = w->job.attempt;
    w->lease_ok_at = dt_now();
    pthread_mutex_unlock(&w->mu);
    log_msg(DT_LOG_INFO, "job.claimed", "%s attempt %d (%s, %s)", w->job.id, w->job.attempt,
            w->job.method, w->job.model);

    int rc = resolve_inputs(w, model_path, train_path, valid_path, out_dir, &rows);
    if (rc < 0)
        requeue(w, "the worker could not read the job's inputs");
    if (rc)
        goto done;

    w->started_step = wk_ckpt_latest(out_dir);
    w->last_write = 0;
    memset(&w->last, 0, sizeof w->last);
    /* db_job_claim() logged "Attempt N started on worker W"; say how. */
    if (w->started_step > 0)
        job_event(w, "info", "Resuming from the checkpoint at step %lld",
                  (long long)w->started_step);
    /* The thread count is part of the result: CPU runs are bitwise
     * reproducible (and resumable byte for byte) for one thread count. */
    char threads[32] = "";
    if (strncmp(o->device, "cuda", 4)) {
        int nt = o->threads > 0 ? o->threads : (int)sysconf(_SC_NPROCESSORS_ONLN);
        snprintf(threads, sizeof threads, " (%d thread%s)", nt, nt == 1 ? "" : "s");
    }
    job_event(w, "info", "Training %s on %s%s: %s, %ld training rows, batch %d, %d epoch(s)",
              w->job.model, o->device, threads, w->job.method, rows, w->job.batch_size,
              w->job.n_epochs);

    wk_run run = {
        .job = &w->job,
        .model_path = model_path,
        .train_path = train_path,
        .valid_path = valid_path[0] ? valid_path : NULL,
        .out_dir = out_dir,
        .train_rows = rows,
        .device = o->device,
        .threads = o->threads,
        .on_progress = cb_progress,
        .on_checkpoint = cb_checkpoint,
        .before_checkpoint = cb_before_checkpoint,
        .ud = w,
        .stop = &w->stop,
        .ckpt_keep = o->cfg.checkpoint_keep,
        .export_shard_size = o->cfg.export_shard_size,
        .memory_limit = w->memory_limit,
    };
    char final[16] = ""; /* the status db_job_finish set, "" when none */
    double t0 = dt_now();
    rc = flag_get(&w->lease_lost) ? DT_ECANCEL : wk_train(&run, err);
    double secs = dt_now() - t0;

    if (flag_get(&w->lease_lost)) {
        /* Someone else owns the job: write nothing, delete nothing (the new
         * owner resumes from the same checkpoints). */
        log_msg(DT_LOG_WARN, "job.abandoned", "%s attempt %d: lease lost; result discarded",
                w->job.id, w->job.attempt);
    } else if (rc == 0) {
        char model_id[DB_MODEL_ID_LEN], stored[DB_PATH_LEN];
        if (obj_ft_model_id(w->job.model, w->job.owner, w->job.suffix, w->job.id, 0,
                            model_id, sizeof model_id) ||
            snprintf(stored, sizeof stored, "%s/merged", w->job.output_dir) >=
                (int)sizeof stored) {
            fail_job(w, "internal_error", NULL, "The model id or path is too long.");
        } else {
            /* The PEFT adapter (lora, delta_lora) is published as files of
             * the model under its adapter/ prefix (server/models.c). */
            char ad[DB_PATH_LEN + 16], pub[DB_PATH_LEN + 32];
            snprintf(ad, sizeof ad, "%s/adapter", out_dir);
            snprintf(pub, sizeof pub, "%s/merged/adapter", out_dir);
            struct stat ast;
            if (!stat(ad, &ast) && S_ISDIR(ast.st_mode) && rename(ad, pub))
                log_msg(DT_LOG_WARN, "job.adapter_publish_failed", "%s: %s -> %s: %s",
                        w->job.id, ad, pub, strerror(errno));
            job_event(w, "info", "New fine-tuned model created: %s", model_id);
            db_finish f = {.status = "succeeded", .fine_tuned_model = model_id,
                           .model_path = stored, .final_status = final};
            finish(w, &f);
            log_msg(DT_LOG_INFO, "job.trained", "%s: %ld steps in %.1f s", w->job.id,
                    (long)w->last.step, secs);
        }
    } else if (rc == DT_ECANCEL && flag_get(&w->cancel_req)) {
        /* db_job_finish() writes the event; checkpoints stay (weights only). */
        db_finish f = {.status = "cancelled", .final_status = final};
        finish(w, &f);
    } else if (rc == DT_ECANCEL && flag_get(&w->runtime_exceeded)) {
        /* Failed for good (not requeued): another attempt would hit it too. */
        fail_job(w, "max_runtime_exceeded", "max_runtime_seconds",
                 "The job ran longer than its max_runtime_seconds (%d s) and was stopped at "
                 "step %ld of %ld. Its checkpoints are kept. Create a new job with fewer steps "
                 "or a larger max_runtime_seconds (at most the server's %d).", max_rt,
                 (long)w->last.step, (long)w->last.total_steps, o->cfg.max_runtime_seconds);
    } else if (rc == DT_ECANCEL && flag_get(&w->pause_req)) {
        db_finish f = {.status = "paused", .final_status = final};
        finish(w, &f);
    } else if (rc == DT_ECANCEL && g_shutdown) {
        char why[256];
        snprintf(why, sizeof why, "worker %s is shutting down (the step in progress is "
                 "dropped; the job resumes from the checkpoint at step %lld)", o->worker_id,
                 (long long)wk_ckpt_latest(out_dir));
        requeue(w, why);
    } else {
        wk_error e;
        wk_classify_error(rc, err, &run, &e);
        log_msg(DT_LOG_WARN, "job.training_failed", "%s: %s (%s)", w->job.id, err, e.code);
        db_finish f = {.status = "failed", .error_code = e.code,
                       .error_message = e.message,
                       .error_param = e.param[0] ? e.param : NULL, .final_status = final};
        finish(w, &f);
    }
    after_finish(w, out_dir, w->last_final, rc == 0);
done:
    pthread_mutex_lock(&w->mu);
    w->active = 0;
    w->job_id[0] = 0;
    pthread_mutex_unlock(&w->mu);
    db_job_clear(&w->job);
}

/* ---- the keeper thread ------------------------------------------------------------- */

typedef struct keeper {
    worker *w;
    db *db;
    queue *q;          /* for publishing only */
    uint64_t qgen, main_qgen;
    sched sched;       /* rescue + reconcile state (api/sched.c) */
} keeper;

static void keeper_heartbeat(keeper *k)
{
    worker *w = k->w;
    char id[DB_ID_LEN], err[DT_ERR_LEN] = "";
    pthread_mutex_lock(&w->mu);
    int active = w->active, attempt = w->attempt;
    double ok_at = w->lease_ok_at;
    snprintf(id, sizeof id, "%s", w->job_id);
    pthread_mutex_unlock(&w->mu);
    if (!active || flag_get(&w->lease_lost))
        return;
    bool c = false, p = false;
    int rc = db_job_heartbeat(k->db, id, attempt, w->o->cfg.lease_seconds, &c, &p, err);
    if (rc == 0) {
        pthread_mutex_lock(&w->mu);
        if (w->active && w->attempt == attempt)
            w->lease_ok_at = dt_now();
        pthread_mutex_unlock(&w->mu);
        flags_seen(w, c, p);
    } else if (rc == DB_ELEASE) {
        log_msg(DT_LOG_WARN, "job.lease_lost", "%s attempt %d: heartbeat matched no row",
                id, attempt);
        flag_set(&w->lease_lost);
    } else {
        log_msg(DT_LOG_WARN, "job.heartbeat_failed", "%s: %s", id, err);
        /* No lease write for a whole lease: the rescuer may have given the
         * job away already, so stop as if it had (self-fencing). */
        if (dt_now() - ok_at > w->o->cfg.lease_seconds) {
            log_msg(DT_LOG_WARN, "job.lease_lost", "%s: no heartbeat for %d s", id,
                    w->o->cfg.lease_seconds);
            flag_set(&w->lease_lost);
        }
    }
}

/* Between heartbeats: a read of the job's cancel/pause flags (no write),
 * so a cancel stops the job within about a second and a micro-batch, not
 * a lease third and an optimizer step. */
static void keeper_flags(keeper *k)
{
    worker *w = k->w;
    char id[DB_ID_LEN], err[DT_ERR_LEN] = "";
    pthread_mutex_lock(&w->mu);
    int active = w->active, attempt = w->attempt;
    snprintf(id, sizeof id, "%s", w->job_id);
    pthread_mutex_unlock(&w->mu);
    if (!active || flag_get(&w->lease_lost))
        return;
    db_job j;
    if (db_job_get(k->db, NULL, id, &j, err)) {
        log_msg(DT_LOG_DEBUG, "job.flags_failed", "%s: %s", id, err);
        return;
    }
    if (j.attempt == attempt && !strcmp(j.status, "running"))
        flags_seen(w, j.cancel_requested, j.pause_requested);
    db_job_clear(&j);
}

static void *keeper_main(void *arg)
{
    keeper *k = arg;
    worker *w = k->w;
    const api_config *cfg = &w->o->cfg;
    double hb_every = cfg->lease_seconds / 3.0, next_hb = 0, next_rescue = 0, next_row = 0;
    double flags_every = cfg->poll_interval_ms / 1000.0, next_flags = 0;
    if (flags_every > 1)
        flags_every = 1;
    if (hb_every < 1)
        hb_every = 1;
    char err[DT_ERR_LEN] = "";
    for (;;) {
        pthread_mutex_lock(&w->mu);
        int quit = w->keeper_quit;
        uint64_t mg = w->main_qgen;
        if (!quit) {
            struct timespec ts;
            dt_deadline(&ts, 0.25);
            pthread_cond_timedwait(&w->cv, &w->mu, &ts);
            quit = w->keeper_quit;
        }
        int active = w->active;
        char job[DB_ID_LEN];
        snprintf(job, sizeof job, "%s", w->job_id);
        pthread_mutex_unlock(&w->mu);
        if (quit)
            break;
        double now = dt_now();
        pthread_mutex_lock(&w->mu);
        int overtime = active && w->active && now >= w->run_deadline;
        pthread_mutex_unlock(&w->mu);
        if (overtime && !flag_get(&w->runtime_exceeded)) {
            log_msg(DT_LOG_WARN, "job.runtime_exceeded", "%s: past its max_runtime_seconds; "
                    "stopping", job);
            flag_set(&w->runtime_exceeded);
            stop_raise(&w->stop, 1); /* with a checkpoint of the last completed step */
        }
        if (active && now >= next_hb) {
            keeper_heartbeat(k);
            next_hb = now + hb_every;
        } else if (active && now >= next_flags) {
            keeper_flags(k);
            next_flags = now + flags_every;
        } else if (!active) {
            next_hb = 0; /* the next job's first heartbeat comes at once */
        }
        /* The keeper's own Redis connection is sched_pass's to watch; a
         * reconnect of the main loop's one forces a re-publish too. */
        uint64_t g = queue_generation(k->q);
        int reconnected = (g != k->qgen && k->qgen != 0) || (mg != k->main_qgen && k->main_qgen);
        k->qgen = g;
        k->main_qgen = mg;
        if (now >= next_rescue || reconnected) {
            sched_pass(&k->sched, k->db, k->q, reconnected, NULL, err);
            next_rescue = now + cfg->rescue_interval_s;
        }
        if (now >= next_row) {
            if (db_worker_heartbeat(k->db, w->o->worker_id, w->hostname, w->o->device,
                                    active ? "busy" : "idle", job, err))
                log_msg(DT_LOG_WARN, "worker.heartbeat_failed", "%s", err);
            next_row = now + hb_every;
        }
    }
    db_worker_heartbeat(k->db, w->o->worker_id, w->hostname, w->o->device, "stopped", "",
                        err);
    return NULL;
}

/* ---- the main loop ---------------------------------------------------------------- */

/* Bytes of the regular files under a directory (an hf export's size). */
static int64_t g_dir_bytes;

static int add_bytes(const char *p, const struct stat *st, int flag, struct FTW *f)
{
    (void)p;
    (void)f;
    if (flag == FTW_F && S_ISREG(st->st_mode))
        g_dir_bytes += st->st_size;
    return 0;
}

static int64_t dir_bytes(const char *dir)
{
    g_dir_bytes = 0; /* the main thread's alone */
    nftw(dir, add_bytes, 16, FTW_PHYS);
    return g_dir_bytes;
}

/* Builds one queued model export (server/exports.c), if there is one: the
 * model's GGUF written into its directory as the export's file (atomically:
 * the server lists no .tmp file; a checkpoint's from its merged model), or
 * for format "hf" a checkpoint's merged Hugging Face directory
 * <checkpoint>/merged in the asked dtype (wk_model_dir), then the row marked
 * succeeded with the size, or failed with the writer's message. Returns 1
 * when it took one. */
static int run_export(worker *w)
{
    char err[DT_ERR_LEN] = "", model_path[DB_PATH_LEN], out[DB_PATH_LEN + 80];
    db_export x;
    int rc = db_export_claim(w->db, w->o->worker_id, &x, err);
    if (rc == DB_ENOTFOUND)
        return 0;
    if (rc) {
        log_msg(DT_LOG_WARN, "export.claim_failed", "%s", err);
        return 0;
    }
    log_msg(DT_LOG_INFO, "export.claimed", "%s model=%s %s %s", x.id, x.model_id, x.format,
            x.type);
    dt_gguf_type type = DT_GGUF_F16;
    struct stat st;
    double t0 = dt_now();
    int64_t bytes = 0;
    char src[DB_PATH_LEN];
    int hf = !strcmp(x.format, "hf");
    if (config_artifact_path(&w->o->cfg, x.model_path, model_path, sizeof model_path) ||
        snprintf(out, sizeof out, "%s/%s", model_path, x.file) >= (int)sizeof out) {
        rc = dt_errf(err, DT_EINVAL, "the model's path is too long");
    } else if (hf) {
        /* A checkpoint's merged directory (model_path/merged), in the asked dtype. */
        rc = wk_model_dir(w->db, &w->o->cfg, x.model_id, x.type, 1, src, sizeof src, err);
        if (!rc)
            bytes = dir_bytes(out);
    } else if ((rc = dt_gguf_type_parse(x.type, &type, "type", err)) == DT_OK &&
               /* a checkpoint: from its merged model */
               (rc = wk_model_dir(w->db, &w->o->cfg, x.model_id, NULL, 0, src, sizeof src,
                                  err)) == DT_OK) {
        rc = dt_gguf_export(src, type, out, NULL, NULL, err);
    }
    if (!rc && !hf && stat(out, &st))
        rc = dt_errf(err, DT_EIO, "%s vanished after it was written", x.file);
    if (!rc && !hf)
        bytes = st.st_size;
    /* the user sees the reason without the server's paths */
    const char *why = err;
    if (rc && !strncmp(err, model_path, strlen(model_path)))
        why = err + strlen(model_path);
    char msg[DT_ERR_LEN];
    snprintf(msg, sizeof msg, "%.160s%.340s", rc && why != err ? x.model_id : "", why);
    if (db_export_finish(w->db, x.id, rc ? "failed" : "succeeded", rc ? 0 : bytes,
                         rc ? msg : NULL, err))
        log_msg(DT_LOG_WARN, "export.finish_failed", "%s: %s", x.id, err);
    if (rc)
        log_msg(DT_LOG_WARN, "export.failed", "%s: %s", x.id, msg);
    else
        log_msg(DT_LOG_INFO, "export.done", "%s: %s, %lld bytes in %.1f s", x.id, x.file,
                (long long)bytes, dt_now() - t0);
    return 1;
}

int wk_main(const wk_opts *o)
{
    worker w;
    keeper k;
    char err[DT_ERR_LEN] = "", safe[CONFIG_URL_LEN];
    int status = 1, jobs = 0;
    memset(&w, 0, sizeof w);
    memset(&k, 0, sizeof k);
    w.o = o;
    pthread_mutex_init(&w.mu, NULL);
    pthread_cond_init(&w.cv, NULL);
    if (gethostname(w.hostname, sizeof w.hostname))
        snprintf(w.hostname, sizeof w.hostname, "unknown");

    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);
    g_stop = &w.stop;

    log_redact_url(o->cfg.database_url, safe, sizeof safe);
    log_msg(DT_LOG_INFO, "worker.start", "worker %s on %s, device %s, database %s",
            o->worker_id, w.hostname, o->device, safe);
    /* PostgreSQL may come up after the worker (compose): retry a while. */
    for (int tries = 0; db_connect(&w.db, o->cfg.database_url, err); tries++) {
        if (tries >= 30 || g_shutdown) {
            log_msg(DT_LOG_ERROR, "worker.db_failed", "%s", err);
            goto fail_db;
        }
        log_msg(DT_LOG_WARN, "worker.db_retry", "%s", err);
        sleep(2);
    }
    if (db_connect(&k.db, o->cfg.database_url, err)) {
        log_msg(DT_LOG_ERROR, "worker.db_failed", "%s", err);
        goto fail_kdb;
    }
    if (queue_open(&w.q, o->cfg.redis_url, err) || queue_open(&k.q, o->cfg.redis_url, err)) {
        log_msg(DT_LOG_ERROR, "worker.redis_failed", "%s", err);
        goto fail_queue;
    }
    /* The memory budget, recorded with the registration (the server admits
     * only jobs that some live worker's budget holds). */
    w.memory_limit = o->memory_limit;
    if (w.memory_limit <= 0)
        w.memory_limit = wk_default_memory_limit(o->device);
    long long base = dt_mem_self_rss();
    {
        char lim[32], b[32];
        dt_mem_human(w.memory_limit, lim, sizeof lim);
        dt_mem_human(base, b, sizeof b);
        log_msg(DT_LOG_INFO, "worker.memory", "memory limit %lld bytes (%s), %s held by "
                "the worker itself", w.memory_limit, lim, b);
    }
    if (db_worker_set_memory(w.db, o->worker_id, w.hostname, o->device, w.memory_limit, base,
                             err))
        log_msg(DT_LOG_WARN, "worker.register_failed", "%s", err);
    k.w = &w;
    pthread_t kt;
    if (pthread_create(&kt, NULL, keeper_main, &k)) {
        log_msg(DT_LOG_ERROR, "worker.thread_failed", "%s", strerror(errno));
        goto fail_queue;
    }

    char hint[DB_ID_LEN] = "";
    while (!g_shutdown) {
        int rc = db_job_claim(w.db, o->worker_id, o->cfg.lease_seconds,
                              hint[0] ? hint : NULL, &w.job, err);
        if (rc == DB_ENOTFOUND && hint[0]) /* a stale wake-up: anything else queued? */
            rc = db_job_claim(w.db, o->worker_id, o->cfg.lease_seconds, NULL, &w.job, err);
        hint[0] = 0;
        if (rc == 0) {
            run_job(&w);
            if (o->max_jobs > 0 && ++jobs >= o->max_jobs)
                break;
            continue;
        }
        if (rc != DB_ENOTFOUND) {
            log_msg(DT_LOG_WARN, "worker.claim_failed", "%s", err);
            usleep((useconds_t)o->cfg.poll_interval_ms * 1000);
            continue;
        }
        /* No job: a queued model export, if any. */
        if (run_export(&w))
            continue;
        /* Idle: a wake-up from Redis, or the poll interval. */
        rc = queue_wait(w.q, o->cfg.poll_interval_ms, hint, err);
        if (rc < 0)
            log_msg(DT_LOG_DEBUG, "queue.wait_failed", "%s", err);
        if (rc != 1)
            hint[0] = 0;
        uint64_t g = queue_generation(w.q);
        pthread_mutex_lock(&w.mu);
        w.main_qgen = g;
        pthread_mutex_unlock(&w.mu);
    }
    status = 0;
    log_msg(DT_LOG_INFO, "worker.stop", "worker %s stopping", o->worker_id);

    pthread_mutex_lock(&w.mu);
    w.keeper_quit = 1;
    pthread_cond_signal(&w.cv);
    pthread_mutex_unlock(&w.mu);
    pthread_join(kt, NULL);
fail_queue:
    queue_free(k.q);
    queue_free(w.q);
    db_free(k.db);
fail_kdb:
    db_free(w.db);
fail_db:
    g_stop = NULL;
    pthread_cond_destroy(&w.cv);
    pthread_mutex_destroy(&w.mu);
    return status;
}
