-- 0001_init.sql: the first schema. Migrations are forward-only: a later
-- change is a new NNNN_name.sql file, never an edit of this one.
-- `deltatune migrate` runs each file in one transaction together with its
-- schema_migrations row. Times are timestamptz; paths are relative to the
-- artifact root unless absolute.

CREATE TABLE IF NOT EXISTS schema_migrations (
    version     text PRIMARY KEY,
    applied_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE api_keys (
    prefix      text PRIMARY KEY CHECK (prefix ~ '^[A-Za-z0-9]{8}$'),
    owner       text NOT NULL CHECK (owner ~ '^[A-Za-z0-9_-]{1,64}$'),
    hash        text NOT NULL CHECK (length(hash) = 64),   -- SHA-256 hex of the whole key
    created_at  timestamptz NOT NULL DEFAULT now(),
    revoked_at  timestamptz
);

CREATE TABLE files (
    id             text PRIMARY KEY,
    seq            bigserial UNIQUE,                -- paging order
    owner          text NOT NULL,
    filename       text NOT NULL,
    purpose        text NOT NULL,
    bytes          bigint NOT NULL CHECK (bytes >= 0),
    status         text NOT NULL CHECK (status IN ('uploaded', 'processed', 'error')),
    status_details text NOT NULL DEFAULT '',
    sha256         text NOT NULL,
    nlines         bigint NOT NULL DEFAULT 0,
    path           text NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now(),
    expires_at     timestamptz
);
CREATE INDEX files_owner_seq ON files (owner, seq);

CREATE TABLE models (
    id          text PRIMARY KEY,
    kind        text NOT NULL CHECK (kind IN ('base', 'fine_tuned', 'checkpoint')),
    owner       text NOT NULL DEFAULT '',             -- '' for base models
    base        text NOT NULL DEFAULT '',
    job_id      text NOT NULL DEFAULT '',
    step        bigint NOT NULL DEFAULT 0,
    path        text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX models_owner ON models (owner, kind);

CREATE TABLE model_files (
    model_id    text NOT NULL,
    name        text NOT NULL,
    bytes       bigint NOT NULL,
    mtime_ns    bigint NOT NULL,
    sha256      text NOT NULL,
    PRIMARY KEY (model_id, name)
);

CREATE TABLE jobs (
    id                  text PRIMARY KEY,
    seq                 bigserial UNIQUE,
    owner               text NOT NULL,
    model               text NOT NULL,
    training_file       text NOT NULL,
    validation_file     text NOT NULL DEFAULT '',
    suffix              text NOT NULL DEFAULT '',
    status              text NOT NULL CHECK (status IN ('validating_files', 'queued',
                          'running', 'succeeded', 'failed', 'cancelled', 'paused')),
    -- resolved hyperparameters
    method              text NOT NULL CHECK (method IN ('delta_lora', 'lora', 'full')),
    method_input        text NOT NULL,
    n_epochs            integer NOT NULL,
    batch_size          integer NOT NULL,
    learning_rate       double precision NOT NULL,
    rank                integer NOT NULL,
    alpha               double precision NOT NULL,
    lambda              double precision NOT NULL,
    start_step          integer NOT NULL,
    target_modules      text NOT NULL,
    seq_len             integer NOT NULL,
    warmup_steps        integer NOT NULL,
    weight_decay        double precision NOT NULL,
    max_grad_norm       double precision NOT NULL,
    lr_scheduler        text NOT NULL,
    grad_accum          integer NOT NULL,
    max_steps           integer NOT NULL,
    checkpoint_interval integer NOT NULL,
    eval_interval       integer NOT NULL,
    seed                bigint NOT NULL,
    -- lease (attempt is the fencing token)
    attempt             integer NOT NULL DEFAULT 0,
    retries             integer NOT NULL DEFAULT 0,
    max_attempts        integer NOT NULL DEFAULT 3,
    lease_expires_at    timestamptz,
    worker_id           text NOT NULL DEFAULT '',
    cancel_requested    boolean NOT NULL DEFAULT false,
    pause_requested     boolean NOT NULL DEFAULT false,
    -- outcome
    error_code          text NOT NULL DEFAULT '',
    error_message       text NOT NULL DEFAULT '',
    error_param         text NOT NULL DEFAULT '',
    output_dir          text NOT NULL,
    fine_tuned_model    text NOT NULL DEFAULT '',
    -- progress
    step                bigint NOT NULL DEFAULT 0,
    total_steps         bigint NOT NULL DEFAULT 0,
    epoch               double precision NOT NULL DEFAULT 0,
    train_loss          double precision,
    valid_loss          double precision,
    tokens_per_second   double precision NOT NULL DEFAULT 0,
    eta_seconds         double precision,
    trained_tokens      bigint NOT NULL DEFAULT 0,
    metadata            jsonb NOT NULL DEFAULT '{}'::jsonb,
    created_at          timestamptz NOT NULL DEFAULT now(),
    started_at          timestamptz,
    finished_at         timestamptz,
    updated_at          timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX jobs_owner_seq ON jobs (owner, seq);
CREATE INDEX jobs_queued ON jobs (seq) WHERE status = 'queued';
CREATE INDEX jobs_running_lease ON jobs (lease_expires_at) WHERE status = 'running';
CREATE INDEX jobs_metadata ON jobs USING gin (metadata jsonb_path_ops);

CREATE TABLE job_events (
    seq         bigserial PRIMARY KEY,
    job_id      text NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    created_at  timestamptz NOT NULL DEFAULT now(),
    level       text NOT NULL CHECK (level IN ('info', 'warn', 'error')),
    type        text NOT NULL CHECK (type IN ('message', 'metrics')),
    message     text NOT NULL,
    data        jsonb
);
CREATE INDEX job_events_job ON job_events (job_id, seq);

CREATE TABLE checkpoints (
    id          text PRIMARY KEY,
    job_id      text NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    step        bigint NOT NULL,
    model_id    text NOT NULL,
    path        text NOT NULL,
    metrics     jsonb NOT NULL DEFAULT '{}'::jsonb,
    created_at  timestamptz NOT NULL DEFAULT now(),
    UNIQUE (job_id, step)
);

CREATE TABLE idempotency_keys (
    owner         text NOT NULL,
    key           text NOT NULL,
    request_hash  text NOT NULL,
    status        integer NOT NULL DEFAULT 0,     -- 0 = request in progress
    response      text,
    created_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (owner, key)
);

CREATE TABLE workers (
    id            text PRIMARY KEY,
    hostname      text NOT NULL DEFAULT '',
    device        text NOT NULL DEFAULT '',
    status        text NOT NULL DEFAULT 'idle',
    job_id        text NOT NULL DEFAULT '',
    started_at    timestamptz NOT NULL DEFAULT now(),
    heartbeat_at  timestamptz NOT NULL DEFAULT now()
);
