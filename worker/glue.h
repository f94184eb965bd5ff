/* glue.h: the worker's bridge to the training engine (gpu/).
 *
 * worker.c speaks SQL and Redis; glue.c speaks dt_train(). They meet here,
 * in types of api/db.h only (no engine header), so the job loop does not
 * depend on the engine's internals and the pieces in glue.c stay pure and
 * unit-testable (tests/unit/test_worker.c). */
#ifndef DT_WORKER_GLUE_H
#define DT_WORKER_GLUE_H

#include <stdatomic.h>

#include "api/db.h"

#define WK_ABORT 2 /* on_progress: stop now, write nothing */

/* One training run of a job: what dt_train needs beyond the job row. */
typedef struct wk_run {
    const db_job *job;       /* borrowed; hyperparameters */
    const char *model_path;  /* base model: HF directory or .gguf (absolute) */
    const char *train_path;  /* training JSONL (absolute) */
    const char *valid_path;  /* validation JSONL or NULL */
    const char *out_dir;     /* <artifact_root>/jobs/<id> (absolute) */
    long train_rows;         /* lines of the training file (checkpoint spacing) */
    const char *device;      /* "cpu" | "cuda:N" | "auto" */
    int threads;             /* CPU threads, 0 = all cores */
    /* After every step: progress, this step's learning rate and pre-clip
     * gradient norm. A non-zero return stops training after a checkpoint
     * (dt_train returns DT_ECANCEL); WK_ABORT stops at once and writes
     * nothing more (no checkpoint, no export): the lease is lost. */
    int (*on_progress)(void *ud, const db_progress *p, double lr,
                       double grad_norm);
    /* Optional: called right before a checkpoint (or the final export) is
     * written for `step`; non-zero aborts without writing it (the caller
     * checks its lease, so a stale worker writes no files). */
    int (*before_checkpoint)(void *ud, int64_t step);
    /* After each complete checkpoint (dir holds state + DONE); non-zero
     * fails the run. */
    int (*on_checkpoint)(void *ud, int64_t step, const char *dir);
    void *ud;
    /* Set from other threads and the signal handler, read between
     * micro-batches: 1 stops with a checkpoint of the last completed step
     * (pause), WK_ABORT stops at once and writes nothing (cancel,
     * SIGTERM): the step in progress is dropped. */
    atomic_int *stop;
    int ckpt_keep;           /* checkpoints that keep their optimizer state */
    long long export_shard_size; /* bytes per safetensors file of the merged model (<= 0: 5 GB) */
    long long memory_limit;  /* bytes a run may take (0: none): a job whose
                                estimate exceeds it is refused before loading */
} wk_run;

/* Trains the job in this thread: dt_train with resume on, so a job claimed
 * again continues from its newest complete checkpoint. Returns 0 (the merged
 * model is in out_dir/merged) or a DT_E* code with detail in err. */
int wk_train(const wk_run *r, char *err);

/* The default --memory-limit: 80 % of MemAvailable for the CPU, 80 % of
 * the device's memory for CUDA (0 when unknown: no limit). */
long long wk_default_memory_limit(const char *device);

/* Newest complete, resumable checkpoint step under out_dir, or 0. */
int64_t wk_ckpt_latest(const char *out_dir);

/* Retention (dt_ckpt_prune): drops the optimizer state of all but the
 * newest `keep` checkpoints (0: of all, once the job has ended). Returns
 * the number dropped or a negative DT_E* code (err may be NULL). */
int wk_ckpt_prune(const char *out_dir, int keep, char *err);

/* Checkpoint spacing when the job leaves it to the worker: at most about
 * ten per run, and never more often than every WK_MIN_CKPT_INTERVAL steps
 * (a tiny job checkpoints at its end only). */
#define WK_MIN_CKPT_INTERVAL 10
int wk_default_ckpt_interval(long total_steps);

/* Optimizer steps of a job over rows of training data (max_steps wins). */
long wk_total_steps(const db_job *j, long rows);

/* A failed run as the user sees it: a stable code, a message saying what to
 * change, and the request field at fault ("" when none). */
typedef struct wk_error {
    char code[64];
    char message[1024];
    char param[128];
} wk_error;

/* Turns dt_train's return code and detail into a wk_error. Paths in the
 * detail are replaced by what the user knows them as (file ids, the model
 * id), so no server path leaks into the API. */
void wk_classify_error(int rc, const char *detail, const wk_run *r,
                       wk_error *out);

#endif
