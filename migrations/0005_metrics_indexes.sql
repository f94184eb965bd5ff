-- 0005: /metrics and model deletion without full scans of jobs.
--
-- /metrics counts the jobs that have not finished through a partial index
-- (O(unfinished jobs)) and reads finished totals from job_status_totals,
-- which a trigger keeps as jobs enter or leave a terminal status (O(1) in
-- the number of finished jobs). jobs_model_active answers "does an
-- unfinished job use this model as its base" (DELETE /v1/models/{id}).

LOCK TABLE jobs IN SHARE ROW EXCLUSIVE MODE;  -- the seed below and the trigger agree

CREATE INDEX jobs_active ON jobs (status)
    WHERE status NOT IN ('succeeded', 'failed', 'cancelled');
CREATE INDEX jobs_model_active ON jobs (model)
    WHERE status NOT IN ('succeeded', 'failed', 'cancelled');

CREATE TABLE job_status_totals (
    status text PRIMARY KEY,
    n      bigint NOT NULL DEFAULT 0
);
INSERT INTO job_status_totals (status, n)
SELECT s, (SELECT count(*) FROM jobs WHERE status = s)
FROM unnest(ARRAY['succeeded', 'failed', 'cancelled']) AS s;

CREATE FUNCTION jobs_count_finished() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'UPDATE' AND OLD.status = NEW.status THEN
        RETURN NULL;
    END IF;
    IF TG_OP IN ('UPDATE', 'DELETE') AND OLD.status IN ('succeeded', 'failed', 'cancelled') THEN
        UPDATE job_status_totals SET n = n - 1 WHERE status = OLD.status;
    END IF;
    IF TG_OP IN ('INSERT', 'UPDATE') AND NEW.status IN ('succeeded', 'failed', 'cancelled') THEN
        UPDATE job_status_totals SET n = n + 1 WHERE status = NEW.status;
    END IF;
    RETURN NULL;
END
$$;
CREATE TRIGGER jobs_count_finished AFTER INSERT OR DELETE OR UPDATE OF status ON jobs
    FOR EACH ROW EXECUTE FUNCTION jobs_count_finished();
