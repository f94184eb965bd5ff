-- 0004: Idempotency-Key records hold their key by a lease (issue 13).
-- An unfinished record (status 0) whose request died with its server was
-- "in progress" for 24 h: every retry got 409. Now the request that claims a
-- key writes a lease (renewed while its body streams in and when its handler
-- starts) and a holder token; a record whose lease ran out is reclaimed by
-- the next request with that key, and only the holder finishes or removes
-- it. Rows made before this migration have no lease: they count as expired
-- an hour after created_at.
ALTER TABLE idempotency_keys
    ADD COLUMN lease_until timestamptz,
    ADD COLUMN holder      text NOT NULL DEFAULT '';
