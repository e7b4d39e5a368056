-- Fencing of job deliveries: the delivery (stream entry id) that currently runs each
-- enhancement's job. Only that delivery may record the outcome, so a worker that lost its job
-- to another (presumed dead, its job requeued) cannot complete or fail the row
-- (docs/architecture.md, "Fencing").
ALTER TABLE enhancement_history ADD COLUMN IF NOT EXISTS claim text;

-- The orphan sweeper reads unfinished rows by age.
CREATE INDEX IF NOT EXISTS ix_enhancement_history_unfinished
    ON enhancement_history (updated_at)
    WHERE status IN ('pending', 'processing');
