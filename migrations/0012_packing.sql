-- 0012: packing several rows into each training sequence
-- (hyperparameters.packing, `deltatune train --packing`); off by default.
ALTER TABLE jobs ADD COLUMN packing boolean NOT NULL DEFAULT false;
