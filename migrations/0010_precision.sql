-- 0010: the arithmetic a job trains in (hyperparameters.precision):
-- fp32 | tf32 | bf16, or '' for auto (bf16 on a GPU of compute capability
-- 8.0 or more, fp32 on the CPU).
ALTER TABLE jobs ADD COLUMN precision text NOT NULL DEFAULT '';
