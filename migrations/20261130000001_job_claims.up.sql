-- Fencing of job deliveries: the delivery (stream entry id) that currently runs each
-- enhancement's job. Only that delivery may record the outcome, so a worker that lost its job
-- to another (presumed dead, its job requeued) cannot complete or fail the row
-- (docs/architecture.md, "Claim (fencing)"). No index: it is read and written only with the
-- row's primary key, and an index on it would cost every status change.
ALTER TABLE enhancement_history ADD COLUMN IF NOT EXISTS claim text;
