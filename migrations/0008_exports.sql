-- 0008: model exports built on request (POST /v1/models/{id}/exports): a
-- GGUF file written by a worker into the model's own directory as
-- model.gguf, so that it is listed and downloaded like every model file and
-- counts toward the owner's storage (it lies under the job's directory).
-- One export of a model at a time is queued or running (exports_active);
-- a newer export replaces the file when it succeeds.
CREATE TABLE model_exports (
    id          text PRIMARY KEY,                       -- "export-<24 hex>"
    owner       text NOT NULL,
    model_id    text NOT NULL REFERENCES models (id) ON DELETE CASCADE,
    format      text NOT NULL CHECK (format IN ('gguf')),
    type        text NOT NULL CHECK (type IN ('f16', 'q8_0', 'q4_0')),
    status      text NOT NULL DEFAULT 'queued'
                CHECK (status IN ('queued', 'running', 'succeeded', 'failed')),
    file        text NOT NULL DEFAULT 'model.gguf',
    bytes       bigint,
    error       text,
    worker_id   text,
    created_at  timestamptz NOT NULL DEFAULT now(),
    started_at  timestamptz,
    finished_at timestamptz
);
CREATE INDEX model_exports_model ON model_exports (model_id, created_at);
CREATE INDEX model_exports_queued ON model_exports (created_at) WHERE status = 'queued';
CREATE UNIQUE INDEX exports_active ON model_exports (model_id)
    WHERE status IN ('queued', 'running');
