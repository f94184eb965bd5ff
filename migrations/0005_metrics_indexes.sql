-- 0005: /metrics and model deletion without full scans of jobs.
--
-- /metrics counts the jobs that have not finished through a partial index
-- (O(unfinished jobs)) and reads finished totals from job_status_totals,
-- which triggers keep as jobs enter or leave a terminal status (O(1) in
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

-- Statement-level triggers with transition tables: one UPDATE of the
-- counters per statement (a row-level trigger updating the same counter row
-- once per job is quadratic in a bulk statement: 20000 rows took 44 s).
CREATE FUNCTION jobs_count_finished() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        UPDATE job_status_totals t SET n = t.n + d.c
        FROM (SELECT status, count(*) AS c FROM new_jobs
              WHERE status IN ('succeeded', 'failed', 'cancelled') GROUP BY status) d
        WHERE t.status = d.status;
    ELSIF TG_OP = 'DELETE' THEN
        UPDATE job_status_totals t SET n = t.n - d.c
        FROM (SELECT status, count(*) AS c FROM old_jobs
              WHERE status IN ('succeeded', 'failed', 'cancelled') GROUP BY status) d
        WHERE t.status = d.status;
    ELSE
        UPDATE job_status_totals t SET n = t.n + d.c
        FROM (SELECT status, sum(c) AS c FROM (
                  SELECT status, 1 AS c FROM new_jobs
                  WHERE status IN ('succeeded', 'failed', 'cancelled')
                  UNION ALL
                  SELECT status, -1 FROM old_jobs
                  WHERE status IN ('succeeded', 'failed', 'cancelled')) x
              GROUP BY status HAVING sum(c) <> 0) d
        WHERE t.status = d.status;
    END IF;
    RETURN NULL;
END
$$;
CREATE TRIGGER jobs_count_finished_insert AFTER INSERT ON jobs
    REFERENCING NEW TABLE AS new_jobs
    FOR EACH STATEMENT EXECUTE FUNCTION jobs_count_finished();
CREATE TRIGGER jobs_count_finished_update AFTER UPDATE ON jobs
    REFERENCING OLD TABLE AS old_jobs NEW TABLE AS new_jobs
    FOR EACH STATEMENT EXECUTE FUNCTION jobs_count_finished();
CREATE TRIGGER jobs_count_finished_delete AFTER DELETE ON jobs
    REFERENCING OLD TABLE AS old_jobs
    FOR EACH STATEMENT EXECUTE FUNCTION jobs_count_finished();
