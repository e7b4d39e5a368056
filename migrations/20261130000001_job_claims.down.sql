ALTER TABLE enhancement_history DROP COLUMN IF EXISTS claim;
