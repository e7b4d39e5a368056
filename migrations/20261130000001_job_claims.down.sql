DROP INDEX IF EXISTS ix_enhancement_history_unfinished;
ALTER TABLE enhancement_history DROP COLUMN IF EXISTS claim;
