-- 0011: a checkpoint's merged Hugging Face directory as an export
-- (POST /v1/models/{id}/exports {"format":"hf","type":"auto|float32|bfloat16|float16"}):
-- built by a worker into <checkpoint>/merged (file 'merged': the prefix of
-- its files in GET /v1/models/{id}/files), then downloaded with
-- GET /v1/models/{id}/archive?part=merged. The type is the merged model's
-- dtype (auto: the export's default, the base's).
ALTER TABLE model_exports DROP CONSTRAINT model_exports_format_check;
ALTER TABLE model_exports DROP CONSTRAINT model_exports_type_check;
ALTER TABLE model_exports ADD CONSTRAINT model_exports_format_check
    CHECK (format IN ('gguf', 'hf'));
ALTER TABLE model_exports ADD CONSTRAINT model_exports_type_check
    CHECK ((format = 'gguf' AND type IN ('f16', 'q8_0', 'q4_0')) OR
           (format = 'hf' AND type IN ('auto', 'float32', 'bfloat16', 'float16')));
