-- 0006: the merged model's dtype (hyperparameters.export_dtype):
-- float32 | bfloat16 | float16, or '' for auto (the base's dtype, bfloat16
-- for a GGUF base).
ALTER TABLE jobs ADD COLUMN export_dtype text NOT NULL DEFAULT '';
