-- 0009_serving.sql: serving workers (issue 17). A workers row is either a
-- training worker ('train': claims fine-tuning jobs, admits them by memory)
-- or a serving worker ('serve': deltatune-worker --serve, takes chat and
-- completion requests from Redis). POST /v1/chat/completions answers 503
-- when no live 'serve' row exists; job admission by memory reads 'train'
-- rows only.
ALTER TABLE workers ADD COLUMN kind text NOT NULL DEFAULT 'train';
