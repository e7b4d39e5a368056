-- Reverts the initial schema. Dropping the tables drops their policies, triggers and grants.
DROP TABLE IF EXISTS enhancement_history;
DROP TABLE IF EXISTS tenant_configs;
DROP FUNCTION IF EXISTS set_updated_at();
