-- Tenants and their enhancement history, isolated per tenant by row-level security.
--
-- Runs as the schema owner, which needs no superuser rights. Every statement is guarded so that
-- re-running it on a database that already has the objects changes nothing.

CREATE OR REPLACE FUNCTION set_updated_at() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    NEW.updated_at := now();
    RETURN NEW;
END;
$$;

CREATE TABLE IF NOT EXISTS tenant_configs (
    id                               uuid         PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id                        varchar(100) NOT NULL,
    name                             varchar(255) NOT NULL,
    servicedesk_url                  varchar(500) NOT NULL,
    -- AES-256-GCM ciphertext ("v1:" || base64(nonce || ciphertext || tag)); never plaintext.
    servicedesk_api_key_encrypted    text         NOT NULL,
    webhook_signing_secret_encrypted text         NOT NULL,
    enhancement_preferences          jsonb        NOT NULL DEFAULT '{}'::jsonb,
    is_active                        boolean      NOT NULL DEFAULT true,
    created_at                       timestamptz  NOT NULL DEFAULT now(),
    updated_at                       timestamptz  NOT NULL DEFAULT now(),
    CONSTRAINT tenant_configs_tenant_id_key UNIQUE (tenant_id),
    CONSTRAINT tenant_configs_tenant_id_format CHECK (tenant_id ~ '^[a-z0-9][a-z0-9_-]*$'),
    CONSTRAINT tenant_configs_preferences_object
        CHECK (jsonb_typeof(enhancement_preferences) = 'object')
);

CREATE TABLE IF NOT EXISTS enhancement_history (
    id                 uuid         PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id          varchar(100) NOT NULL
        REFERENCES tenant_configs (tenant_id) ON DELETE CASCADE,
    ticket_id          varchar(100) NOT NULL,
    status             varchar(20)  NOT NULL DEFAULT 'pending',
    -- What the client sent with the request, kept for the enhancement logic.
    context            jsonb        NOT NULL DEFAULT '{}'::jsonb,
    context_gathered   jsonb,
    llm_output         text,
    error_message      text,
    processing_time_ms integer,
    created_at         timestamptz  NOT NULL DEFAULT now(),
    updated_at         timestamptz  NOT NULL DEFAULT now(),
    completed_at       timestamptz,
    CONSTRAINT enhancement_history_status_valid
        CHECK (status IN ('pending', 'processing', 'completed', 'failed'))
);

CREATE INDEX IF NOT EXISTS ix_enhancement_history_tenant_id ON enhancement_history (tenant_id);
CREATE INDEX IF NOT EXISTS ix_enhancement_history_ticket_id ON enhancement_history (ticket_id);
CREATE INDEX IF NOT EXISTS ix_enhancement_history_status ON enhancement_history (status);
-- Keyset paging, newest first, with and without a tenant filter.
CREATE INDEX IF NOT EXISTS ix_enhancement_history_created
    ON enhancement_history (created_at DESC, id DESC);
CREATE INDEX IF NOT EXISTS ix_enhancement_history_tenant_created
    ON enhancement_history (tenant_id, created_at DESC, id DESC);

CREATE OR REPLACE TRIGGER tenant_configs_set_updated_at
    BEFORE UPDATE ON tenant_configs
    FOR EACH ROW EXECUTE FUNCTION set_updated_at();
CREATE OR REPLACE TRIGGER enhancement_history_set_updated_at
    BEFORE UPDATE ON enhancement_history
    FOR EACH ROW EXECUTE FUNCTION set_updated_at();

-- Row-level security, forced so that it binds the table owner too. A session sees a row only
-- when `app.current_tenant_id` names its tenant; unset or empty matches nothing (fail closed).
-- The admin API's cross-tenant listings set `app.cross_tenant = 'on'` in their own read-only
-- transaction; that setting grants SELECT and nothing else.
ALTER TABLE tenant_configs ENABLE ROW LEVEL SECURITY;
ALTER TABLE tenant_configs FORCE ROW LEVEL SECURITY;
ALTER TABLE enhancement_history ENABLE ROW LEVEL SECURITY;
ALTER TABLE enhancement_history FORCE ROW LEVEL SECURITY;

DROP POLICY IF EXISTS tenant_isolation ON tenant_configs;
CREATE POLICY tenant_isolation ON tenant_configs
    FOR ALL TO PUBLIC
    USING (tenant_id = NULLIF(current_setting('app.current_tenant_id', true), ''))
    WITH CHECK (tenant_id = NULLIF(current_setting('app.current_tenant_id', true), ''));
DROP POLICY IF EXISTS cross_tenant_read ON tenant_configs;
CREATE POLICY cross_tenant_read ON tenant_configs
    FOR SELECT TO PUBLIC
    USING (current_setting('app.cross_tenant', true) = 'on');

DROP POLICY IF EXISTS tenant_isolation ON enhancement_history;
CREATE POLICY tenant_isolation ON enhancement_history
    FOR ALL TO PUBLIC
    USING (tenant_id = NULLIF(current_setting('app.current_tenant_id', true), ''))
    WITH CHECK (tenant_id = NULLIF(current_setting('app.current_tenant_id', true), ''));
DROP POLICY IF EXISTS cross_tenant_read ON enhancement_history;
CREATE POLICY cross_tenant_read ON enhancement_history
    FOR SELECT TO PUBLIC
    USING (current_setting('app.cross_tenant', true) = 'on');

-- The application role belongs to the deployment (roles are cluster-wide). Grant to it when it
-- exists; deployments also set default privileges, so either way the app can use the tables.
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'ai_agents_app') THEN
        GRANT SELECT, INSERT, UPDATE, DELETE ON tenant_configs, enhancement_history
            TO ai_agents_app;
    END IF;
END;
$$;
