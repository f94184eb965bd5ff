/* db_sql.c: every SQL statement of the service, prepared by name at connect
 * (db_connect in db_pool.c). The table is indexed by enum db_stmt
 * (db_internal.h), so callers name a statement by a constant the compiler
 * checks; the string name is what PostgreSQL knows it by. Column lists are
 * macros so that the row readers in db_*.c and the statements agree on the
 * order. Times leave PostgreSQL as Unix seconds (0 for NULL). */
#include "db_internal.h"

#include <string.h>

#define T(x) "coalesce(floor(extract(epoch from " x "))::bigint, 0)"

#define KEY_COLS "prefix, owner, hash, " T("created_at") ", " T("revoked_at")

#define FILE_COLS "id, owner, filename, purpose, bytes, " T("created_at") ", " \
    T("expires_at") ", status, status_details, sha256, nlines, path"

#define MODEL_COLS "id, kind, owner, base, job_id, step, path, " T("created_at")

/* 53 columns; db_jobs.c: job_row() reads them in this order. */
#define JOB_COLS "id, owner, model, training_file, validation_file, suffix, status, " \
    "method, method_input, n_epochs, batch_size, learning_rate, rank, alpha, " \
    "lambda, start_step, target_modules, seq_len, warmup_steps, weight_decay, " \
    "max_grad_norm, lr_scheduler, grad_accum, max_steps, checkpoint_interval, " \
    "eval_interval, seed, attempt, retries, max_attempts, " T("lease_expires_at") ", " \
    "worker_id, cancel_requested, pause_requested, error_code, error_message, " \
    "error_param, output_dir, fine_tuned_model, step, total_steps, epoch, " \
    "train_loss, valid_loss, tokens_per_second, eta_seconds, trained_tokens, " \
    "metadata::text, " T("created_at") ", " T("started_at") ", " T("finished_at") \
    ", " T("updated_at") ", max_runtime_seconds, export_dtype, precision, packing"

#define EVENT_COLS "seq, job_id, " T("created_at") ", level, type, message, data::text"

#define EXPORT_COLS "id, owner, model_id, format, type, status, file, coalesce(bytes, 0), " \
    "coalesce(error, ''), " T("created_at") ", " T("finished_at")

#define CKPT_COLS "id, job_id, model_id, step, " T("created_at") ", path, metrics::text"

/* Statuses a user may still cancel without a worker's help. */
#define IDLE "('queued', 'paused', 'validating_files')"

/* Statuses that count against an owner's active-jobs limit. */
#define ACTIVE "('validating_files', 'queued', 'running', 'paused')"

#define FENCE "id = $1 AND attempt = $2 AND status = 'running'"

const db_sql db_sql_table[] = {
    [STMT_PING] =
        {"ping", "SELECT 1"},

    /* ---- api keys ---- */
    [STMT_KEY_CREATE] =
        {"key_create", "INSERT INTO api_keys (prefix, owner, hash) VALUES ($1, $2, $3)"},
    [STMT_KEY_LOOKUP] =
        {"key_lookup", "SELECT " KEY_COLS " FROM api_keys WHERE prefix = $1 "
                       "AND revoked_at IS NULL"},
    [STMT_KEY_LIST] =
        {"key_list", "SELECT " KEY_COLS " FROM api_keys ORDER BY created_at DESC, prefix"},
    [STMT_KEY_REVOKE] =
        {"key_revoke", "UPDATE api_keys SET revoked_at = now() WHERE prefix = $1 "
                       "AND revoked_at IS NULL RETURNING prefix"},

    /* ---- files ---- */
    [STMT_FILE_CREATE] =
        {"file_create", "INSERT INTO files (id, owner, filename, purpose, bytes, status, "
                        "status_details, sha256, nlines, path, expires_at) VALUES ($1, $2, $3, "
                        "$4, $5, $6, $7, $8, $9, $10, CASE WHEN $11::bigint > 0 THEN "
                        "to_timestamp($11::bigint) END)"},
    [STMT_FILE_GET] =
        {"file_get", "SELECT " FILE_COLS " FROM files WHERE id = $1 AND owner = $2"},
    [STMT_FILE_LIST_DESC] =
        {"file_list_desc", "SELECT " FILE_COLS " FROM files WHERE owner = $1 AND "
                           "(expires_at IS NULL OR expires_at > now()) AND "
                           "($2::text IS NULL OR purpose = $2) AND ($3::text IS NULL OR seq < "
                           "(SELECT seq FROM files WHERE id = $3 AND owner = $1)) "
                           "ORDER BY seq DESC LIMIT $4"},
    [STMT_FILE_LIST_ASC] =
        {"file_list_asc", "SELECT " FILE_COLS " FROM files WHERE owner = $1 AND "
                           "(expires_at IS NULL OR expires_at > now()) AND "
                          "($2::text IS NULL OR purpose = $2) AND ($3::text IS NULL OR seq > "
                          "(SELECT seq FROM files WHERE id = $3 AND owner = $1)) "
                          "ORDER BY seq ASC LIMIT $4"},
    [STMT_FILE_IN_USE] =
        {"file_in_use", "SELECT id FROM jobs WHERE owner = $1 AND status IN ('queued', "
                        "'running', 'paused', 'validating_files') AND (training_file = $2 "
                        "OR validation_file = $2) LIMIT 1"},
    [STMT_FILE_DELETE] =
        {"file_delete", "DELETE FROM files WHERE id = $1 AND owner = $2 RETURNING " FILE_COLS},
    /* A job's step metrics as CSV rows (the last event of each step, so a
         * resumed run's repeated steps count once): step, train_loss,
         * train_accuracy, valid_loss, valid_mean_token_accuracy (OpenAI's
         * columns; accuracies are not measured), learning_rate, grad_norm,
         * tokens_per_second, trained_tokens. */
    [STMT_JOB_RESULTS_CSV] =
        {"job_results_csv",
         "SELECT coalesce(string_agg(line, E'\\n' ORDER BY step), '') FROM (SELECT DISTINCT ON "
         "((data->>'step')::bigint) (data->>'step')::bigint AS step, concat_ws(',', "
         "data->>'step', coalesce(data->>'train_loss', ''), '', coalesce(data->>'valid_loss', ''), "
         "'', coalesce(data->>'learning_rate', ''), coalesce(data->>'grad_norm', ''), "
         "coalesce(data->>'tokens_per_second', ''), coalesce(data->>'trained_tokens', '')) AS line "
         "FROM job_events WHERE job_id = $1 AND type = 'metrics' AND data ? 'step' "
         "ORDER BY (data->>'step')::bigint, seq DESC) s"},
    /* Expired files no unfinished job needs (the rescuer's pass removes them). */
    [STMT_FILES_EXPIRE] =
        {"files_expire", "DELETE FROM files WHERE id IN (SELECT id FROM files WHERE "
                         "expires_at <= now() AND NOT EXISTS (SELECT 1 FROM jobs j WHERE "
                         "j.owner = files.owner AND j.status IN ('queued', 'running', 'paused', "
                         "'validating_files') AND (j.training_file = files.id OR "
                         "j.validation_file = files.id)) LIMIT $1) RETURNING id, path"},

    /* ---- models ---- */
    [STMT_MODEL_PUT] =
        {"model_put", "INSERT INTO models (id, kind, owner, base, job_id, step, path) "
                      "VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (id) DO UPDATE SET "
                      "kind = EXCLUDED.kind, owner = EXCLUDED.owner, base = EXCLUDED.base, "
                      "job_id = EXCLUDED.job_id, step = EXCLUDED.step, path = EXCLUDED.path"},
    [STMT_MODEL_GET] =
        {"model_get", "SELECT " MODEL_COLS " FROM models WHERE id = $1 AND ($2::text IS NULL "
                      "OR kind = 'base' OR owner = $2)"},
    [STMT_MODEL_LIST] =
        /* Checkpoints are not listed (as OpenAI): reachable by id and by the
         * job's checkpoints. */
        {"model_list", "SELECT " MODEL_COLS " FROM models WHERE ($1::text IS NULL OR "
                       "kind = 'base' OR owner = $1) AND kind <> 'checkpoint' "
                       "ORDER BY kind <> 'base', created_at, id"},
    /* jobs_model_active (0005) keeps this O(unfinished jobs) */
    [STMT_MODEL_IN_USE] =
        {"model_in_use", "SELECT id, status FROM jobs WHERE model = $1 AND status NOT IN "
                         "('succeeded', 'failed', 'cancelled') LIMIT 1"},
    [STMT_MODEL_DELETE] =
        {"model_delete", "DELETE FROM models WHERE id = $1 AND owner = $2 AND kind <> 'base' "
                         "RETURNING " MODEL_COLS},
    [STMT_MODEL_FILES_DELETE] =
        {"model_files_delete", "DELETE FROM model_files WHERE model_id = $1"},
    [STMT_DIGEST_GET] =
        {"digest_get", "SELECT sha256 FROM model_files WHERE model_id = $1 AND name = $2 "
                       "AND bytes = $3 AND mtime_ns = $4"},
    [STMT_DIGEST_PUT] =
        {"digest_put", "INSERT INTO model_files (model_id, name, bytes, mtime_ns, sha256) "
                       "VALUES ($1, $2, $3, $4, $5) ON CONFLICT (model_id, name) DO UPDATE "
                       "SET bytes = EXCLUDED.bytes, mtime_ns = EXCLUDED.mtime_ns, "
                       "sha256 = EXCLUDED.sha256"},

    /* ---- idempotency ---- */
    [STMT_IDEM_INSERT] =
        {"idem_insert", "INSERT INTO idempotency_keys (owner, key, request_hash, holder, "
                        "lease_until) VALUES ($1, $2, $3, $4, now() + $5::int * interval "
                        "'1 second') ON CONFLICT (owner, key) DO UPDATE SET "
                        "request_hash = EXCLUDED.request_hash, status = 0, response = NULL, "
                        "created_at = now(), holder = EXCLUDED.holder, "
                        "lease_until = EXCLUDED.lease_until WHERE idempotency_keys.created_at < "
                        "now() - interval '24 hours' OR (idempotency_keys.status = 0 AND "
                        "COALESCE(idempotency_keys.lease_until, idempotency_keys.created_at + "
                        "interval '1 hour') < now()) RETURNING 1"},
    [STMT_IDEM_GET] =
        {"idem_get", "SELECT request_hash, status, response FROM idempotency_keys "
                     "WHERE owner = $1 AND key = $2"},
    [STMT_IDEM_FINISH] =
        {"idem_finish", "UPDATE idempotency_keys SET status = $3, response = $4, "
                        "lease_until = NULL WHERE owner = $1 AND key = $2 AND holder = $5 "
                        "AND status = 0"},
    [STMT_IDEM_DELETE] =
        {"idem_delete", "DELETE FROM idempotency_keys WHERE owner = $1 AND key = $2 "
                        "AND holder = $3 AND status = 0"},
    [STMT_IDEM_RENEW] =
        {"idem_renew", "UPDATE idempotency_keys SET lease_until = now() + $4::int * "
                       "interval '1 second', request_hash = COALESCE($5, request_hash) "
                       "WHERE owner = $1 AND key = $2 AND holder = $3 AND status = 0 "
                       "RETURNING 1"},

    /* ---- workers and stats ---- */
    [STMT_WORKER_HB] =
        {"worker_hb", "INSERT INTO workers (id, hostname, device, status, job_id) VALUES "
                      "($1, $2, $3, $4, $5) ON CONFLICT (id) DO UPDATE SET hostname = "
                      "EXCLUDED.hostname, device = EXCLUDED.device, status = EXCLUDED.status, "
                      "job_id = EXCLUDED.job_id, heartbeat_at = now()"},
    [STMT_STATS_JOBS] =
        /* unfinished jobs through the partial index jobs_active; finished
         * ones from the counters a trigger keeps (0005): no scan of
         * finished jobs per scrape */
        {"stats_jobs", "SELECT status, count(*) FROM jobs WHERE status NOT IN "
                       "('succeeded', 'failed', 'cancelled') GROUP BY status"},
    [STMT_STATS_JOB_TOTALS] =
        {"stats_job_totals", "SELECT status, n FROM job_status_totals"},
    [STMT_STATS_TPS] =
        {"stats_tps", "SELECT coalesce(sum(tokens_per_second), 0) FROM jobs "
                      "WHERE status = 'running'"},
    [STMT_WORKER_MEMORY] =
        {"worker_memory", "INSERT INTO workers (id, hostname, device, memory_limit_bytes, "
                          "memory_base_bytes) VALUES ($1, $2, $3, $4, $5) ON CONFLICT (id) DO "
                          "UPDATE SET hostname = EXCLUDED.hostname, device = EXCLUDED.device, "
                          "memory_limit_bytes = EXCLUDED.memory_limit_bytes, memory_base_bytes "
                          "= EXCLUDED.memory_base_bytes, heartbeat_at = now()"},
    /* live workers (not stopped, a heartbeat within $1 seconds): how many,
     * whether one has no recorded limit, the largest budget for one job */
    [STMT_WORKERS_MEMORY] =
        {"workers_memory", "SELECT count(*), coalesce(bool_or(memory_limit_bytes = 0), false), "
                           "coalesce(max(memory_limit_bytes - memory_base_bytes) FILTER (WHERE "
                           "memory_limit_bytes > 0 AND device NOT LIKE 'cuda%'), 0), "
                           "coalesce(max(memory_limit_bytes - memory_base_bytes) FILTER (WHERE "
                           "memory_limit_bytes > 0 AND device LIKE 'cuda%'), 0) FROM workers "
                           "WHERE status <> 'stopped' AND kind = 'train' AND heartbeat_at > "
                           "now() - make_interval(secs => $1)"},
    /* a serving worker's registration and heartbeat (0009): kind 'serve',
     * status 'serving' | 'stopped', its memory budget for loaded models */
    [STMT_WORKER_SERVE_HB] =
        {"worker_serve_hb", "INSERT INTO workers (id, hostname, device, status, kind, "
                            "memory_limit_bytes) VALUES ($1, $2, $3, $4, 'serve', $5) ON "
                            "CONFLICT (id) DO UPDATE SET hostname = EXCLUDED.hostname, device = "
                            "EXCLUDED.device, status = EXCLUDED.status, kind = 'serve', "
                            "memory_limit_bytes = EXCLUDED.memory_limit_bytes, heartbeat_at = "
                            "now()"},
    /* live serving workers: not stopped, a heartbeat within $1 seconds */
    [STMT_WORKERS_SERVING] =
        {"workers_serving", "SELECT count(*) FROM workers WHERE kind = 'serve' AND status <> "
                            "'stopped' AND heartbeat_at > now() - make_interval(secs => $1)"},
    [STMT_STATS_WORKERS] =
        {"stats_workers", "SELECT id, hostname, device, status, job_id, " T("heartbeat_at")
                          " FROM workers WHERE heartbeat_at > now() - interval '1 day' "
                          "ORDER BY id"},

    /* ---- jobs ---- */
    [STMT_JOB_CREATE] =
        {"job_create", "INSERT INTO jobs (id, owner, model, training_file, validation_file, "
                       "suffix, status, method, method_input, n_epochs, batch_size, "
                       "learning_rate, rank, alpha, lambda, start_step, target_modules, "
                       "seq_len, warmup_steps, weight_decay, max_grad_norm, lr_scheduler, "
                       "grad_accum, max_steps, checkpoint_interval, eval_interval, seed, "
                       "max_attempts, output_dir, metadata, max_runtime_seconds, export_dtype, "
                       "precision, packing) "
                       "VALUES ($1, $2, "
                       "$3, $4, $5, $6, 'queued', $7, $8, $9, $10, $11, $12, $13, $14, $15, "
                       "$16, $17, $18, $19, $20, $21, $22, $23, $24, $25, $26, $27, $28, "
                       "coalesce($29::jsonb, '{}'::jsonb), $30, $31, $32, $33)"},
    [STMT_JOB_GET] =
        {"job_get", "SELECT " JOB_COLS " FROM jobs WHERE id = $1 AND "
                    "($2::text IS NULL OR owner = $2)"},
    [STMT_JOB_LIST] =
        {"job_list", "SELECT " JOB_COLS " FROM jobs WHERE owner = $1 AND ($2::text IS NULL "
                     "OR seq < (SELECT seq FROM jobs WHERE id = $2 AND owner = $1)) AND "
                     "($3::jsonb IS NULL OR metadata @> $3::jsonb) ORDER BY seq DESC LIMIT $4"},
    [STMT_JOB_CANCEL] =
        {"job_cancel", "UPDATE jobs SET status = CASE WHEN status IN " IDLE " THEN "
                       "'cancelled' ELSE status END, cancel_requested = (status = 'running'), "
                       "pause_requested = false, finished_at = CASE WHEN status IN " IDLE
                       " THEN now() ELSE finished_at END, updated_at = now() WHERE id = $1 "
                       "AND owner = $2 AND (status IN " IDLE " OR status = 'running') "
                       "RETURNING " JOB_COLS},
    [STMT_JOB_PAUSE] =
        {"job_pause", "UPDATE jobs SET status = CASE WHEN status = 'queued' THEN 'paused' "
                      "ELSE status END, pause_requested = (status = 'running'), updated_at = "
                      "now() WHERE id = $1 AND owner = $2 AND status IN ('queued', 'running') "
                      "AND NOT cancel_requested RETURNING " JOB_COLS},
    [STMT_JOB_RESUME] =
        {"job_resume", "UPDATE jobs SET status = CASE WHEN status = 'paused' THEN 'queued' "
                       "ELSE status END, pause_requested = false, updated_at = now() WHERE "
                       "id = $1 AND owner = $2 AND (status = 'paused' OR (status = 'running' "
                       "AND pause_requested)) RETURNING " JOB_COLS},
    [STMT_JOB_CLAIM] =
        {"job_claim", "UPDATE jobs SET status = 'running', attempt = attempt + 1, worker_id = "
                      "$1, lease_expires_at = now() + make_interval(secs => $2::int), "
                      "started_at = coalesce(started_at, now()), updated_at = now() WHERE "
                      "status = 'queued' AND id = ("
                      /* Fair claiming: the oldest queued job of the owner with the
                       * fewest running jobs; ties go to the owner served least
                       * recently (latest start oldest, never first), then to the
                       * oldest job. */
                      "WITH o AS (SELECT q.owner, (SELECT count(*) FROM jobs r WHERE "
                      "r.owner = q.owner AND r.status = 'running') AS running, (SELECT "
                      "max(s.started_at) FROM jobs s WHERE s.owner = q.owner) AS last_start "
                      "FROM (SELECT DISTINCT owner FROM jobs WHERE status = 'queued') q) "
                      "SELECT j.id FROM jobs j JOIN o ON o.owner = j.owner WHERE j.status = "
                      "'queued' ORDER BY o.running, o.last_start NULLS FIRST, j.seq LIMIT 1 "
                      "FOR UPDATE OF j SKIP LOCKED) RETURNING " JOB_COLS},
    [STMT_JOB_HEARTBEAT] =
        {"job_heartbeat", "UPDATE jobs SET lease_expires_at = now() + make_interval(secs => "
                          "$3::int), updated_at = now() WHERE " FENCE
                          " RETURNING cancel_requested, pause_requested"},
    [STMT_JOB_PROGRESS] =
        {"job_progress", "UPDATE jobs SET lease_expires_at = now() + make_interval(secs => "
                         "$3::int), step = $4, total_steps = $5, epoch = $6, train_loss = "
                         "coalesce($7::float8, train_loss), valid_loss = coalesce($8::float8, "
                         "valid_loss), tokens_per_second = $9, eta_seconds = $10, "
                         "trained_tokens = $11, updated_at = now() WHERE " FENCE
                         " RETURNING cancel_requested, pause_requested"},
    [STMT_JOB_FENCE] =
        {"job_fence", "SELECT owner, model, suffix FROM jobs WHERE " FENCE " FOR UPDATE"},
    [STMT_JOB_FINISH] =
        {"job_finish", "UPDATE jobs SET status = $3, finished_at = CASE WHEN $3 IN "
                       "('succeeded', 'failed', 'cancelled') THEN now() END, "
                       "lease_expires_at = NULL, worker_id = '', error_code = $4, "
                       "error_message = $5, error_param = $6, fine_tuned_model = "
                       "coalesce($7, fine_tuned_model), pause_requested = false, "
                       "eta_seconds = CASE WHEN $3 = 'succeeded' "
                       "THEN 0 END, updated_at = now() WHERE " FENCE " RETURNING id"},
    [STMT_JOB_REQUEUE] =
        {"job_requeue", "UPDATE jobs SET status = CASE WHEN cancel_requested THEN 'cancelled' "
                        "WHEN pause_requested THEN 'paused' ELSE 'queued' END, finished_at = "
                        "CASE WHEN cancel_requested THEN now() END, pause_requested = false, "
                        "lease_expires_at = NULL, worker_id = '', tokens_per_second = 0, "
                        "updated_at = now() WHERE " FENCE " RETURNING status"},
    [STMT_JOB_RESCUE] =
        {"job_rescue",
         "WITH r AS (UPDATE jobs SET status = CASE WHEN cancel_requested THEN 'cancelled' "
         "WHEN pause_requested THEN 'paused' WHEN retries + 1 >= max_attempts THEN 'failed' "
         "ELSE 'queued' END, retries = CASE WHEN cancel_requested OR pause_requested THEN "
         "retries ELSE retries + 1 END, error_code = CASE WHEN NOT cancel_requested AND NOT "
         "pause_requested AND retries + 1 >= max_attempts THEN 'lease_expired' ELSE error_code "
         "END, error_message = CASE WHEN NOT cancel_requested AND NOT pause_requested AND "
         "retries + 1 >= max_attempts THEN 'the worker running this job stopped responding ' "
         "|| max_attempts || ' times; the job may need less memory or time per step' ELSE "
         "error_message END, finished_at = CASE WHEN cancel_requested OR (NOT pause_requested "
         "AND retries + 1 >= max_attempts) THEN now() END, lease_expires_at = NULL, "
         "worker_id = '', pause_requested = false, tokens_per_second = 0, updated_at = now() "
         "WHERE id IN (SELECT id FROM jobs WHERE status = 'running' AND lease_expires_at < "
         "now() FOR UPDATE SKIP LOCKED) RETURNING id, status) "
         "INSERT INTO job_events (job_id, level, type, message, data) SELECT id, CASE WHEN "
         "status = 'failed' THEN 'error' ELSE 'warn' END, 'message', 'Lease expired; job is "
         "now ' || status, jsonb_build_object('status', status) FROM r "
         "RETURNING data->>'status'"},
    [STMT_JOBS_QUEUED] =
        {"jobs_queued", "SELECT id FROM jobs WHERE status = 'queued' ORDER BY seq LIMIT $1"},
    [STMT_JOB_OWNED] =
        {"job_owned", "SELECT 1 FROM jobs WHERE id = $1 AND owner = $2"},

    /* ---- events ---- */
    [STMT_EVENT_ADD] =
        {"event_add", "INSERT INTO job_events (job_id, level, type, message, data) SELECT "
                      "$1, $3, $4, $5, $6::jsonb FROM jobs WHERE id = $1 AND ($2::int < 0 OR "
                      "(attempt = $2 AND status = 'running')) RETURNING seq"},
    [STMT_EVENT_LIST] =
        {"event_list", "SELECT " EVENT_COLS " FROM job_events WHERE job_id = $1 AND "
                       "($2::bigint <= 0 OR seq < $2) ORDER BY seq DESC LIMIT $3"},

    /* ---- checkpoints ---- */
    [STMT_CKPT_PUT] =
        {"ckpt_put", "INSERT INTO checkpoints (id, job_id, step, model_id, path, metrics) "
                     "VALUES ($1, $2, $3, $4, $5, coalesce($6::jsonb, '{}'::jsonb)) ON "
                     "CONFLICT (job_id, step) DO UPDATE SET model_id = EXCLUDED.model_id, "
                     "path = EXCLUDED.path, metrics = EXCLUDED.metrics, created_at = now()"},
    [STMT_CKPT_LIST] =
        {"ckpt_list", "SELECT " CKPT_COLS " FROM checkpoints WHERE job_id = $1 AND "
                      "($2::text IS NULL OR step < (SELECT step FROM checkpoints WHERE id = $2 "
                      "AND job_id = $1)) ORDER BY step DESC LIMIT $3"},

    /* ---- owners (limits, use) ---- */
    [STMT_OWNER_LIMITS_GET] =
        {"owner_limits_get", "SELECT coalesce(max_jobs, -1), coalesce(max_storage_bytes, -1), "
                             "coalesce(max_upload_bytes, -1) FROM owner_limits WHERE owner = $1"},
    [STMT_OWNER_LIMITS_PUT] =
        {"owner_limits_put", "INSERT INTO owner_limits (owner, max_jobs, max_storage_bytes, "
                             "max_upload_bytes) VALUES ($1, $2::int, $3::bigint, $4::bigint) "
                             "ON CONFLICT (owner) DO UPDATE SET max_jobs = EXCLUDED.max_jobs, "
                             "max_storage_bytes = EXCLUDED.max_storage_bytes, max_upload_bytes "
                             "= EXCLUDED.max_upload_bytes, updated_at = now()"},
    [STMT_OWNER_LIST] =
        {"owner_list", "SELECT o.owner, coalesce(l.max_jobs, -1), coalesce(l.max_storage_bytes, "
                       "-1), coalesce(l.max_upload_bytes, -1), (SELECT count(*) FROM jobs j "
                       "WHERE j.owner = o.owner AND j.status IN " ACTIVE "), (SELECT "
                       "coalesce(sum(f.bytes), 0) FROM files f WHERE f.owner = o.owner) FROM "
                       "(SELECT owner FROM api_keys UNION SELECT owner FROM owner_limits) o "
                       "LEFT JOIN owner_limits l ON l.owner = o.owner ORDER BY o.owner"},
    [STMT_OWNER_ACTIVE] =
        {"owner_active", "SELECT count(*) FROM jobs WHERE owner = $1 AND status IN " ACTIVE},
    [STMT_OWNER_FILE_BYTES] =
        {"owner_file_bytes", "SELECT coalesce(sum(bytes), 0) FROM files WHERE owner = $1"},
    [STMT_OWNER_JOB_DIRS] =
        {"owner_job_dirs", "SELECT output_dir FROM jobs WHERE owner = $1 ORDER BY seq"},
    [STMT_OWNER_LOCK] =
        {"owner_lock", "SELECT pg_advisory_lock(1684370997, hashtext($1))"},
    [STMT_OWNER_UNLOCK] =
        {"owner_unlock", "SELECT pg_advisory_unlock(1684370997, hashtext($1))"},

    /* ---- model exports ---- */
    /* exports_active (0008) makes a second active export of a model a
     * unique violation: DB_ECONFLICT */
    [STMT_EXPORT_CREATE] =
        {"export_create", "INSERT INTO model_exports (id, owner, model_id, format, type, "
                          "file) VALUES ($1, $2, $3, $4, $5, $6) RETURNING " EXPORT_COLS},
    [STMT_EXPORT_GET] =
        {"export_get", "SELECT " EXPORT_COLS " FROM model_exports WHERE id = $1 AND "
                       "model_id = $2 AND owner = $3"},
    [STMT_EXPORT_LIST] =
        {"export_list", "SELECT " EXPORT_COLS " FROM model_exports WHERE model_id = $1 AND "
                        "owner = $2 ORDER BY created_at DESC, id LIMIT 100"},
    /* the oldest queued export, or a running one whose worker stopped: this
     * worker's own (same worker id), or any started over an hour ago */
    [STMT_EXPORT_CLAIM] =
        {"export_claim", "UPDATE model_exports e SET status = 'running', worker_id = $1, "
                         "started_at = now() FROM models m WHERE m.id = e.model_id AND e.id = "
                         "(SELECT id FROM model_exports WHERE status = 'queued' OR (status = "
                         "'running' AND (worker_id = $1 OR started_at < now() - interval "
                         "'1 hour')) ORDER BY created_at LIMIT 1 FOR "
                         "UPDATE SKIP LOCKED) RETURNING e.id, e.owner, e.model_id, e.format, "
                         "e.type, e.status, e.file, 0, '', 0, 0, m.path"},
    [STMT_EXPORT_FINISH] =
        {"export_finish", "UPDATE model_exports SET status = $2, bytes = $3, error = $4, "
                          "finished_at = now() WHERE id = $1 AND status = 'running'"},
};

/* Every enum db_stmt has its slot. A slot given twice fails the build
 * (-Woverride-init, part of -Wextra); the size check catches a missing last
 * slot; db_sql_check() (run at every connect and by a unit test) catches a
 * gap in the middle, which designated initializers would leave NULL. */
_Static_assert(sizeof db_sql_table / sizeof db_sql_table[0] == STMT__COUNT,
               "db_sql_table: one entry per enum db_stmt");

int db_sql_check(char *err)
{
    for (int i = 0; i < STMT__COUNT; i++) {
        const db_sql *s = &db_sql_table[i];
        if (!s->name || !*s->name || !s->sql || !*s->sql)
            return dt_errf(err, DB_ESQL, "db_sql_table: statement %d (enum db_stmt) has "
                           "no name or SQL", i);
        for (int j = 0; j < i; j++)
            if (!strcmp(db_sql_table[j].name, s->name))
                return dt_errf(err, DB_ESQL, "db_sql_table: statements %d and %d are both "
                               "named %s", j, i, s->name);
    }
    return 0;
}
