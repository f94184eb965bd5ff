/* db.h: PostgreSQL, the source of truth (libpq).
 *
 * One `db` is one connection, for one thread at a time. Every statement is
 * prepared by name at connect from the static table in db_sql.c; when the
 * connection breaks, the next call resets it (re-preparing everything) and
 * retries once, then returns DB_EUNAVAIL. The server shares a db_pool.
 *
 * Functions return 0 or a negative code: DT_E* (base/dt.h) or DB_E* below,
 * with detail in err (DT_ERR_LEN bytes, may be NULL). Scoped functions take
 * the owner of the API key: a row of another owner is DB_ENOTFOUND.
 *
 * Timestamps are Unix seconds. Stored paths (files.path, jobs.output_dir,
 * models.path) are relative to the artifact root unless absolute; resolve
 * them with config_artifact_path().
 *
 * Worker protocol (DESIGN §1). db_job_claim() sets status=running,
 * attempt=attempt+1, worker_id, lease_expires_at=now()+lease and returns the
 * new attempt: the fencing token. Every later worker write takes
 * (job_id, attempt) and matches `WHERE id=$1 AND attempt=$2 AND
 * status='running'`; zero rows means another worker (or the rescuer) owns
 * the job now, and the call returns DB_ELEASE: stop training, write nothing
 * more. */
#ifndef DT_API_DB_H
#define DT_API_DB_H

#include <stdbool.h>
#include <stdint.h>

#include "base/dt.h"

enum {
    DB_ENOTFOUND = -100, /* no such row for this owner */
    DB_ELEASE = -101,    /* fenced write matched 0 rows: the lease is lost */
    DB_ECONFLICT = -102, /* invalid state transition, duplicate key */
    DB_EUNAVAIL = -103,  /* PostgreSQL unreachable (retry later) */
    DB_ESQL = -104,      /* any other SQL error (message in err) */
};
/* Names DB_E* codes and falls back to dt_strerror() for DT_E*. */
const char *db_strerror(int code);

#define DB_ID_LEN 64        /* ids: "file-<24 hex>", "ftjob-<24 hex>", ... */
#define DB_OWNER_LEN 65     /* owner names: [A-Za-z0-9_-]{1,64} */
#define DB_MODEL_ID_LEN 512 /* "ft:<base>:<owner>:<suffix>:<job>[:ckpt-step-N]" */
#define DB_PATH_LEN 1024

/* Job statuses (jobs.status CHECK constraint). */
#define DB_JOB_STATUSES \
    X(validating_files) X(queued) X(running) X(succeeded) X(failed) \
    X(cancelled) X(paused)

typedef struct db db;

/* Connects and prepares every statement. *out is a new handle (db_free). */
int db_connect(db **out, const char *url, char *err);
void db_free(db *d);
/* SELECT 1; reconnects when the connection is broken. */
int db_ping(db *d, char *err);

/* Runs fn(d, arg) inside BEGIN ISOLATION LEVEL REPEATABLE READ ... COMMIT,
 * retrying the whole transaction (up to 5 times, with jitter) when fn or the
 * COMMIT fails with SQLSTATE 40001 (serialization) or 40P01 (deadlock).
 * fn returns 0 to commit or a negative code to roll back (returned as is). */
int db_tx(db *d, int (*fn)(db *d, void *arg, char *err), void *arg,
          char *err);

/* A fixed set of connections for a multi-threaded server. acquire blocks
 * until one is free (at most wait_ms; DB_EUNAVAIL then). */
typedef struct db_pool db_pool;
int db_pool_new(db_pool **out, const char *url, int size, char *err);
void db_pool_free(db_pool *p);
db *db_pool_acquire(db_pool *p, int wait_ms);
void db_pool_release(db_pool *p, db *d);

/* ---- migrations --------------------------------------------------------- */

/* Applies every dir/NNNN_*.sql not yet in schema_migrations, in order, each
 * in its own transaction together with its schema_migrations row. Works on
 * an empty database (does not need the prepared statements). *applied
 * counts the files applied now. */
int db_migrate(const char *url, const char *dir, int *applied, char *err);

/* ---- API keys ----------------------------------------------------------- */

typedef struct db_key {
    char prefix[16];          /* the 8 base62 characters after "dt-" */
    char owner[DB_OWNER_LEN];
    char hash[65];            /* SHA-256 hex of the whole key */
    int64_t created_at;
    int64_t revoked_at;       /* 0 = active */
} db_key;

int db_key_create(db *d, const char *prefix, const char *hash_hex,
                  const char *owner, char *err);
/* Active keys only. */
int db_key_lookup(db *d, const char *prefix, db_key *out, char *err);
/* All keys (active and revoked), newest first; *out is malloc'd (free()). */
int db_key_list(db *d, db_key **out, int *n, char *err);
int db_key_revoke(db *d, const char *prefix, char *err);

/* ---- files ------------------------------------------------------------- */

typedef struct db_file {
    char id[DB_ID_LEN];
    char owner[DB_OWNER_LEN];
    char filename[256];       /* as uploaded (display only; never a path) */
    char purpose[32];         /* "fine-tune" */
    int64_t bytes;
    int64_t created_at;
    int64_t expires_at;       /* 0 = never */
    char status[16];          /* uploaded | processed | error */
    char status_details[4096]; /* bad lines, one per line ("" when fine) */
    char sha256[65];
    long nlines;              /* JSONL records */
    char path[DB_PATH_LEN];   /* stored path ("files/<id>.jsonl") */
} db_file;

int db_file_create(db *d, const db_file *f, char *err);
int db_file_get(db *d, const char *owner, const char *id, db_file *out,
                char *err);
/* Owner's files newest first; after = id of the last file of the previous
 * page (NULL for the first page); purpose filters when non-NULL. *out is
 * malloc'd (free()); *has_more says another page exists. */
int db_file_list(db *d, const char *owner, const char *after, int limit,
                 const char *purpose, bool ascending, db_file **out, int *n,
                 bool *has_more, char *err);
/* Deletes the row; the caller removes f->path. DB_ECONFLICT when a queued
 * or running job of the owner uses the file. */
int db_file_delete(db *d, const char *owner, const char *id, db_file *out,
                   char *err);
/* A job's step metrics as CSV rows, no header, one per step ("" when
 * none); *csv is malloc'd. The caller checks the job's owner first. */
int db_job_results_csv(db *d, const char *job_id, char **csv, char *err);
/* Deletes up to limit files whose expires_at has passed and that no
 * unfinished job uses; *paths (malloc'd, free()) gets their stored paths for
 * the caller to remove. Lists already hide expired files. */
int db_files_expire(db *d, int limit, char (**paths)[DB_PATH_LEN], int *n, char *err);

/* ---- jobs ---------------------------------------------------------------- */

typedef struct db_progress {
    int64_t step, total_steps;
    double epoch;
    double train_loss;         /* NaN = not known yet */
    double valid_loss;         /* NaN = not evaluated yet */
    double tokens_per_second;
    double eta_seconds;        /* NaN = unknown */
    int64_t trained_tokens;
    /* reported in the metrics events, not stored in the job row: */
    int64_t peak_device_bytes; /* the engine's peak device memory so far */
    int act_ckpt;              /* 1: activation checkpointing is on */
} db_progress;

typedef struct db_job {
    char id[DB_ID_LEN];
    char owner[DB_OWNER_LEN];
    char model[256];            /* base model id (models.id) */
    char training_file[DB_ID_LEN];
    char validation_file[DB_ID_LEN]; /* "" = none */
    char suffix[65];
    char status[24];            /* see DB_JOB_STATUSES */

    /* Resolved hyperparameters (validate.c resolves "auto"). */
    char method[16];            /* delta_lora | lora | full */
    char method_input[16];      /* the method type the client sent (e.g. supervised) */
    int n_epochs, batch_size;
    double learning_rate;       /* absolute peak learning rate */
    int rank;                   /* r (lora, delta_lora) */
    double alpha;               /* scaling s = alpha / r */
    double lambda;              /* Delta-LoRA λ */
    int start_step;             /* Delta-LoRA K; -1 = engine default (10% of steps) */
    char target_modules[64];    /* "q,v" */
    int seq_len;                /* tokens per row */
    int warmup_steps;
    double weight_decay, max_grad_norm;
    char lr_scheduler[16];      /* linear | cosine | constant */
    int grad_accum;             /* micro-batches per optimizer step */
    int max_steps;              /* 0 = n_epochs decides */
    int checkpoint_interval;    /* steps; 0 = worker's choice */
    int eval_interval;          /* steps; 0 = worker's choice */
    int64_t seed;

    /* Lease and outcome. */
    int attempt;                /* fencing token: +1 per claim */
    int retries;                /* leases lost (rescuer); failed at max_attempts */
    int max_attempts;
    int64_t lease_expires_at;   /* 0 = not leased */
    char worker_id[128];
    bool cancel_requested, pause_requested;
    char error_code[64], error_message[1024], error_param[128]; /* "" = none */
    char output_dir[DB_PATH_LEN];  /* stored path: "jobs/<id>" (checkpoints/, model/) */
    char fine_tuned_model[DB_MODEL_ID_LEN]; /* "" until succeeded */
    db_progress progress;
    int64_t created_at, started_at, finished_at, updated_at; /* 0 = not yet */
    char *metadata;             /* JSON object text, malloc'd; NULL = {} */
    int max_runtime_seconds;    /* per attempt; 0 = the worker's DELTATUNE_MAX_RUNTIME_SECONDS */
    char export_dtype[16];      /* float32 | bfloat16 | float16; "" = auto (the base's,
                                 * bfloat16 for a GGUF base) */
    char precision[8];          /* fp32 | tf32 | bf16; "" = auto (bf16 on a GPU of compute
                                 * capability 8.0 or more, fp32 elsewhere) */
    bool packing;               /* several rows packed into each sequence (migration 0012) */
} db_job;

/* Frees j->metadata (the struct itself is caller storage). */
void db_job_clear(db_job *j);
/* Frees an array from db_job_list() and its metadata strings. */
void db_job_array_free(db_job *a, int n);

/* Inserts j (status queued, attempt 0) and a "created" event in one
 * transaction. j->id and j->output_dir must be set. */
int db_job_create(db *d, const db_job *j, char *err);
/* Scoped get (owner NULL = any owner: workers). */
int db_job_get(db *d, const char *owner, const char *id, db_job *out,
               char *err);
/* Newest first; after = last id of the previous page; meta_filter is a JSON
 * object text every returned job's metadata contains (NULL = none). */
int db_job_list(db *d, const char *owner, const char *after, int limit,
                const char *meta_filter, db_job **out, int *n, bool *has_more,
                char *err);

/* User transitions; *out receives the job after the change. DB_ECONFLICT
 * names the current status in err when the transition is invalid.
 *   cancel: queued|paused|validating_files -> cancelled;
 *           running -> cancel_requested (the worker stops within a step);
 *   pause:  queued -> paused; running -> pause_requested;
 *   resume: paused -> queued (the caller publishes it);
 *           running with pause_requested -> pause request withdrawn. */
int db_job_cancel(db *d, const char *owner, const char *id, db_job *out,
                  char *err);
int db_job_pause(db *d, const char *owner, const char *id, db_job *out,
                 char *err);
int db_job_resume(db *d, const char *owner, const char *id, db_job *out,
                  char *err);

/* Worker: claims a queued job with FOR UPDATE SKIP LOCKED, fairly: the
 * oldest queued job of the owner with the fewest running jobs; among owners
 * with as many, the one whose latest job start is oldest (or who never
 * started one), then the oldest job. job_id (a queue wake-up) is a hint
 * only and does not change the choice. DB_ENOTFOUND = nothing to do.
 * out->attempt is the fencing token for every call below. */
int db_job_claim(db *d, const char *worker_id, int lease_s,
                 const char *job_id, db_job *out, char *err);

/* Worker: extends the lease to now()+lease_s and reads the user's requests.
 * DB_ELEASE when the lease is lost. */
int db_job_heartbeat(db *d, const char *id, int attempt, int lease_s,
                     bool *cancel_requested, bool *pause_requested,
                     char *err);
/* Worker: stores progress, extends the lease, and reads the requests like
 * db_job_heartbeat (either flag pointer may be NULL). */
int db_job_progress(db *d, const char *id, int attempt, int lease_s,
                    const db_progress *p, bool *cancel_requested,
                    bool *pause_requested, char *err);

typedef struct db_finish {
    const char *status;          /* succeeded | failed | cancelled | paused */
    const char *error_code;      /* failed: stable code, e.g. "invalid_training_file" */
    const char *error_message;   /* failed: what the user can do about it */
    const char *error_param;     /* failed: request field at fault, or NULL */
    const char *fine_tuned_model; /* succeeded: obj_ft_model_id() */
    const char *model_path;      /* succeeded: merged HF dir (stored path) */
    char *final_status;          /* out, optional (16 bytes): the status the job got */
} db_finish;

/* Worker: ends the attempt in one transaction: sets status (finished_at for
 * terminal ones; paused keeps the job resumable), clears the lease, records
 * the error, inserts the fine-tuned model row on success and an event.
 * The job's cancel/pause flags are read again under the row lock, so the
 * last request the API accepted wins: cancel_requested -> cancelled
 * (whatever the worker reports; no model row); pause_requested and
 * succeeded -> paused (a resume exports again); paused without
 * pause_requested (a resume came after the worker saw the pause) -> queued,
 * to continue from its checkpoint. f->final_status receives the status set.
 * DB_ELEASE when the lease is lost. */
int db_job_finish(db *d, const char *id, int attempt, const db_finish *f,
                  char *err);
/* Worker shutting down: gives the job back (status queued, lease cleared)
 * without counting a retry. DB_ELEASE when already lost. */
int db_job_requeue(db *d, const char *id, int attempt, char *err);

/* Rescuer (server and workers run it): every running job whose lease
 * expired goes to cancelled (cancel requested), paused (pause requested),
 * failed (retries+1 >= max_attempts; error_code "lease_expired") or back to
 * queued with retries+1. Counts what it did. */
int db_rescue_expired(db *d, int *requeued, int *failed, char *err);

/* Reconciler: ids of up to max queued jobs, oldest first; *out malloc'd
 * array of DB_ID_LEN strings (free()). */
int db_jobs_queued(db *d, int max, char (**out)[DB_ID_LEN], int *n,
                   char *err);

/* ---- events --------------------------------------------------------------- */

typedef struct db_event {
    int64_t seq;               /* API id is "ftevent-<seq>" */
    char job_id[DB_ID_LEN];
    int64_t created_at;
    char level[8];             /* info | warn | error */
    char type[16];             /* message | metrics */
    char message[1024];
    char *data;                /* JSON text, malloc'd; NULL = null */
} db_event;

void db_event_array_free(db_event *a, int n);

/* Appends an event. attempt >= 0 fences it like the other worker writes
 * (DB_ELEASE); attempt < 0 writes unconditionally (server-side events).
 * data is JSON text or NULL. */
int db_event_add(db *d, const char *job_id, int attempt, const char *level,
                 const char *type, const char *message, const char *data,
                 char *err);
/* Newest first; after_seq > 0 returns events older than it. The job must
 * belong to owner (DB_ENOTFOUND). */
int db_event_list(db *d, const char *owner, const char *job_id,
                  int64_t after_seq, int limit, db_event **out, int *n,
                  bool *has_more, char *err);

/* ---- checkpoints ---------------------------------------------------------- */

typedef struct db_checkpoint {
    char id[DB_ID_LEN];        /* "ftckpt-<24 hex>" */
    char job_id[DB_ID_LEN];
    char model_id[DB_MODEL_ID_LEN]; /* "ft:...:ckpt-step-N" */
    int64_t step;
    int64_t created_at;
    char path[DB_PATH_LEN];    /* stored path of the checkpoint directory */
    char *metrics;             /* JSON object text, malloc'd; NULL = {} */
} db_checkpoint;

void db_checkpoint_array_free(db_checkpoint *a, int n);

/* Worker: records a complete checkpoint and its model row (kind
 * "checkpoint") in one transaction, fenced (DB_ELEASE). A second call for
 * the same step (a resumed attempt) updates the row. metrics: JSON or NULL. */
int db_checkpoint_add(db *d, const char *job_id, int attempt, int64_t step,
                      const char *model_id, const char *path,
                      const char *metrics, char *err);
/* Newest step first; after = checkpoint id of the previous page's last. */
int db_checkpoint_list(db *d, const char *owner, const char *job_id,
                       const char *after, int limit, db_checkpoint **out,
                       int *n, bool *has_more, char *err);

/* ---- models ---------------------------------------------------------------- */

typedef struct db_model {
    char id[DB_MODEL_ID_LEN];
    char kind[16];             /* base | fine_tuned | checkpoint */
    char owner[DB_OWNER_LEN];  /* "" for base models (owned_by "deltatune") */
    char base[256];            /* base model id ("" for base models) */
    char job_id[DB_ID_LEN];
    int64_t step;              /* checkpoint step, else 0 */
    char path[DB_PATH_LEN];    /* HF directory or .gguf file (stored path) */
    int64_t created_at;
} db_model;

/* Inserts or updates (same id) a model row. */
int db_model_put(db *d, const db_model *m, char *err);
/* Base models, plus owner's fine-tuned models and checkpoints (owner NULL:
 * every model, for `deltatune models list`). */
int db_model_get(db *d, const char *owner, const char *id, db_model *out,
                 char *err);
int db_model_list(db *d, const char *owner, db_model **out, int *n,
                  char *err);
/* Deletes one of owner's fine-tuned models or checkpoints (base models are
 * DB_ENOTFOUND for API users; the caller removes files it owns). DB_ECONFLICT
 * while a job that has not finished uses it as its base model. */
int db_model_delete(db *d, const char *owner, const char *id, db_model *out,
                    char *err);

/* Cached file digests of a model directory (name, size, mtime -> sha256):
 * a hit needs the same size and mtime. */
int db_model_file_digest(db *d, const char *model_id, const char *name,
                         int64_t bytes, int64_t mtime_ns, char sha256[65],
                         char *err);
int db_model_file_digest_put(db *d, const char *model_id, const char *name,
                             int64_t bytes, int64_t mtime_ns,
                             const char *sha256, char *err);

/* ---- model exports (db_exports.c; migration 0008) ------------------------------ */

/* An export of a model, built by a worker into the model's directory: a
 * GGUF file (format gguf), or a checkpoint's merged Hugging Face directory
 * (format hf, file "merged": the prefix of its files). */
typedef struct db_export {
    char id[DB_ID_LEN];              /* "export-<24 hex>" */
    char owner[DB_OWNER_LEN];
    char model_id[DB_MODEL_ID_LEN];
    char format[16];                 /* gguf | hf */
    char type[16];                   /* gguf: f16 | q8_0 | q4_0; hf: auto | float32 |
                                        bfloat16 | float16 */
    char status[16];                 /* queued | running | succeeded | failed */
    char file[64];                   /* the file's name in the model's files */
    int64_t bytes;                   /* the file's size once succeeded, else 0 */
    char error[512];                 /* why it failed, else "" */
    int64_t created_at, finished_at; /* Unix seconds (0: not yet) */
    char model_path[DB_PATH_LEN];    /* the model's stored path (claim only) */
} db_export;

/* Queues an export (e->id, owner, model_id, format, type, file ("": the
 * default model.gguf) set); *e is
 * refreshed from the row. DB_ECONFLICT while another export of the model is
 * queued or running. */
int db_export_create(db *d, db_export *e, char *err);
int db_export_get(db *d, const char *owner, const char *model_id, const char *id,
                  db_export *out, char *err);
/* The owner's exports of a model, newest first (at most 100). */
int db_export_list(db *d, const char *owner, const char *model_id, db_export **out,
                   int *n, char *err);
/* Takes the oldest queued export (or one worker_id left running) and marks
 * it running; DB_ENOTFOUND when there is none. */
int db_export_claim(db *d, const char *worker_id, db_export *out, char *err);
/* Records the end of a running export: status succeeded (bytes) or failed
 * (error). */
int db_export_finish(db *d, const char *id, const char *status, int64_t bytes,
                     const char *error, char *err);

/* ---- idempotency ------------------------------------------------------------ */

enum { DB_IDEM_NEW = 0, DB_IDEM_REPLAY = 1, DB_IDEM_MISMATCH = 2,
       DB_IDEM_IN_PROGRESS = 3, DB_IDEM_DONE = 4 };

/* Claims (owner, key) for the request whose holder token is `holder`.
 * Absent, finished more than 24 hours ago, or unfinished with its lease run
 * out (its request died with its server): a placeholder is written, held by
 * `holder` for lease_s seconds, and DB_IDEM_NEW returned (the caller runs
 * the request, renewing the lease with db_idem_renew while it runs, then
 * db_idem_finish or db_idem_abort). Unfinished and leased to another:
 * DB_IDEM_IN_PROGRESS. Finished: with request_hash NULL (the body not read
 * yet) DB_IDEM_DONE; with the same request_hash DB_IDEM_REPLAY with *status
 * and *body (malloc'd) set; with another DB_IDEM_MISMATCH. */
int db_idem_begin(db *d, const char *owner, const char *key,
                  const char *request_hash, const char *holder, int lease_s,
                  int *status, char **body, char *err);
/* Extends the lease of holder's unfinished record by lease_s seconds from
 * now and, when request_hash is not NULL, records the request's hash. 0, or
 * DB_IDEM_IN_PROGRESS when holder no longer holds it (its lease ran out and
 * another request took the key). */
int db_idem_renew(db *d, const char *owner, const char *key, const char *holder,
                  const char *request_hash, int lease_s, char *err);
/* Stores the response of holder's record / removes holder's unfinished
 * record; a record holder lost is left alone. */
int db_idem_finish(db *d, const char *owner, const char *key, const char *holder,
                   int status, const char *body, char *err);
int db_idem_abort(db *d, const char *owner, const char *key, const char *holder,
                  char *err);

/* ---- owners: limits and use (db_owners.c) ----------------------------------- */

/* An owner's overrides (owner_limits): -1 = the server's default, 0 = no
 * limit. In db_owner_limits_set, DB_LIMIT_KEEP leaves a value as it is. */
#define DB_LIMIT_DEFAULT (-1)
#define DB_LIMIT_KEEP (-2)
typedef struct db_owner_limits {
    char owner[DB_OWNER_LEN];
    int64_t max_jobs;           /* active jobs (validating_files, queued, running, paused) */
    int64_t max_storage_bytes;  /* uploads + everything under the owner's job directories */
    int64_t max_upload_bytes;   /* one upload */
    int64_t active_jobs;        /* db_owner_list only */
    int64_t file_bytes;         /* db_owner_list only: the owner's uploads */
} db_owner_limits;

/* The owner's overrides; all DB_LIMIT_DEFAULT when none were set. */
int db_owner_limits_get(db *d, const char *owner, db_owner_limits *out, char *err);
/* Sets the overrides that are not DB_LIMIT_KEEP (DB_LIMIT_DEFAULT clears one). */
int db_owner_limits_set(db *d, const db_owner_limits *l, char *err);
/* Every owner with a key or overrides, by name; *out malloc'd (free()). */
int db_owner_list(db *d, db_owner_limits **out, int *n, char *err);
/* Jobs of owner in validating_files, queued, running or paused. */
int db_owner_active_jobs(db *d, const char *owner, int64_t *n, char *err);
/* Bytes of the owner's uploads (files rows), and the stored output
 * directories of all the owner's jobs (*dirs malloc'd, free()). */
int db_owner_storage(db *d, const char *owner, int64_t *file_bytes,
                     char (**dirs)[DB_PATH_LEN], int *ndirs, char *err);
/* A session advisory lock on the owner, held by this connection until
 * db_owner_unlock: admission checks (count, then insert) of one owner run
 * one at a time across server threads and servers. */
int db_owner_lock(db *d, const char *owner, char *err);
void db_owner_unlock(db *d, const char *owner);

/* ---- workers and metrics -------------------------------------------------- */

/* Upserts the workers row: status "idle" | "busy" | "stopped". */
int db_worker_heartbeat(db *d, const char *worker_id, const char *hostname,
                        const char *device, const char *status,
                        const char *job_id, char *err);

/* Records the worker's memory budget (migration 0002) with its
 * registration: limit = --memory-limit, base = the worker's own resident
 * memory when idle (bytes). */
int db_worker_set_memory(db *d, const char *worker_id, const char *hostname,
                         const char *device, int64_t limit, int64_t base, char *err);
/* Live training workers (not stopped, heartbeat within live_s seconds): *n
 * of them; *unlimited when one has no recorded limit; *budget_cpu and
 * *budget_gpu the largest limit - base among the others on a CPU and on a
 * CUDA device (bytes one job may take; 0: none of that kind). */
int db_workers_memory(db *d, int live_s, int *n, bool *unlimited, int64_t *budget_cpu,
                      int64_t *budget_gpu, char *err);

/* A serving worker's heartbeat (deltatune-worker --serve, migration 0009):
 * upserts its row with kind 'serve', status "serving" | "stopped" and its
 * memory budget for loaded models (bytes). */
int db_worker_serve_heartbeat(db *d, const char *worker_id, const char *hostname,
                              const char *device, const char *status, int64_t limit,
                              char *err);
/* Live serving workers (not stopped, heartbeat within live_s seconds). */
int db_workers_serving(db *d, int live_s, int *n, char *err);

typedef struct db_worker {
    char id[128];
    char hostname[256];
    char device[64];
    char status[16];
    char job_id[DB_ID_LEN];
    int64_t heartbeat_at;
} db_worker;

typedef struct db_stats {
    int64_t jobs_by_status[7];  /* in DB_JOB_STATUSES order */
    double tokens_per_second;   /* sum over running jobs */
    db_worker *workers;         /* malloc'd (free()) */
    int nworkers;
} db_stats;

int db_stats_get(db *d, db_stats *out, char *err);

/* The status names in DB_JOB_STATUSES order, and the index of a name (-1). */
extern const char *const db_job_status_names[7];
int db_job_status_index(const char *status);

#endif
