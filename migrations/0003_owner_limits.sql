-- 0003_owner_limits.sql: per-owner limits and the per-job runtime limit
-- (issue 13, "Quotas, fairness, limits"). README.md (admin commands,
-- configuration) says what each limit counts and what exceeding it answers.

-- Overrides set with `deltatune owners set NAME ...`. NULL = the server's
-- default (DELTATUNE_OWNER_MAX_JOBS, DELTATUNE_OWNER_MAX_STORAGE,
-- DELTATUNE_MAX_UPLOAD_BYTES); 0 = no limit.
CREATE TABLE owner_limits (
    owner              text PRIMARY KEY CHECK (owner ~ '^[A-Za-z0-9_-]{1,64}$'),
    max_jobs           integer CHECK (max_jobs >= 0),
    max_storage_bytes  bigint CHECK (max_storage_bytes >= 0),
    max_upload_bytes   bigint CHECK (max_upload_bytes >= 0),
    updated_at         timestamptz NOT NULL DEFAULT now()
);

-- Seconds one attempt of the job may run; 0 = the worker's
-- DELTATUNE_MAX_RUNTIME_SECONDS (jobs created before this migration).
ALTER TABLE jobs ADD COLUMN max_runtime_seconds integer NOT NULL DEFAULT 0
    CHECK (max_runtime_seconds >= 0);

-- The active-jobs count at job creation, and fair claiming's per-owner
-- running count and latest start.
CREATE INDEX jobs_owner_active ON jobs (owner)
    WHERE status IN ('validating_files', 'queued', 'running', 'paused');
CREATE INDEX jobs_owner_started ON jobs (owner, started_at);
