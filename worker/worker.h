/* worker.h: deltatune-worker, the claim -> train -> checkpoint -> report loop
 * of DESIGN §1.
 *
 * One worker trains one job at a time, in its main thread. A second thread
 * (the keeper) owns its own PostgreSQL connection and Redis handle and:
 *   - extends the lease of the running job every lease/3 seconds, fenced by
 *     (job id, attempt); a lost lease (or no successful extension for a whole
 *     lease) stops training and the worker writes nothing more for the job;
 *   - picks up cancel and pause requests between progress writes;
 *   - runs the rescuer (expired leases -> queued / failed / cancelled /
 *     paused) and the reconciler (queued jobs re-published to Redis) every
 *     rescue interval and after a Redis reconnect;
 *   - keeps the workers row (idle / busy, heartbeat) fresh.
 * Redis only wakes the worker; it also polls PostgreSQL every poll interval.
 * With no job to claim, the main thread builds one queued model export
 * (a GGUF file written into the model's directory; server/exports.c).
 */
#ifndef DT_WORKER_H
#define DT_WORKER_H

#include "api/config.h"
#include "api/db.h"

typedef struct wk_opts {
    api_config cfg;        /* database, Redis, artifact root, lease, intervals */
    char device[64];      /* "cpu" | "cuda:N" | "auto" */
    int threads;          /* CPU threads for training, 0 = all cores */
    char worker_id[128];  /* unique per worker; default "<hostname>-<pid>" */
    int max_jobs;         /* exit after this many jobs (0 = never; tests) */
    int serve;            /* --serve: a serving worker (serve.h), not a training one */
    int token_delay_ms;   /* --serve: pause after each decode step (tests: a slow stream) */
    int max_batch;        /* --serve: requests decoded together at most (0: 16) */
    long long memory_limit; /* bytes one job may take, the worker included
                               (0: default, 80 % of MemAvailable on the CPU,
                               of the device's memory on CUDA) */
} wk_opts;

/* Runs until SIGTERM/SIGINT (installed here): the job in progress stops
 * between two micro-batches without writing anything (the step in progress
 * is dropped) and goes back to the queue for another worker, which resumes
 * it from its last checkpoint. Returns a process exit status. */
int wk_main(const wk_opts *o);

/* The directory the engine loads for model `id` (any owner's: the caller
 * checked access), resolved under cfg's artifact root into out (n bytes):
 * a base or fine-tuned model's stored path; a checkpoint's merged Hugging
 * Face directory <checkpoint>/merged, built with dt_ckpt_export from its
 * base's directory (resolved the same way) when missing, or always when
 * `rebuild` (dtype: as dt_ckpt_export's). Returns 0, a DB_E* code (<= -100:
 * DB_ENOTFOUND when the model does not exist) or a DT_E* code with err set
 * (the checkpoint cannot be merged: the job or export fails). worker/models.c. */
int wk_model_dir(db *d, const api_config *cfg, const char *id, const char *dtype,
                 int rebuild, char *out, size_t n, char *err);

#endif
