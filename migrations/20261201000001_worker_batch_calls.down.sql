-- Undoes the up migration of the same name: drops the two calls, nothing else.
DROP FUNCTION IF EXISTS complete_jobs(text[], uuid[], text[], integer[], text[], text[]);
DROP FUNCTION IF EXISTS claim_jobs(text[], uuid[], text[], text[], integer);
