-- 0002_worker_memory.sql: each worker's memory budget, recorded with its
-- registration (issue 13, memory admission). memory_limit_bytes is the
-- worker's --memory-limit (default 80 % of MemAvailable on the CPU, of the
-- device's memory on CUDA); memory_base_bytes is what the worker process
-- itself holds when idle (code, libraries), so a job may take
-- memory_limit_bytes - memory_base_bytes. 0 = not recorded (a worker from
-- before this migration): POST /v1/fine_tuning/jobs then assumes it can hold
-- any job.
ALTER TABLE workers ADD COLUMN memory_limit_bytes bigint NOT NULL DEFAULT 0;
ALTER TABLE workers ADD COLUMN memory_base_bytes bigint NOT NULL DEFAULT 0;
