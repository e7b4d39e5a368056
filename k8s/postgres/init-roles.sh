#!/usr/bin/env bash
# Creates the roles and the database of ai-agents on a fresh PostgreSQL cluster.
#
# One script for every deployment that runs its own PostgreSQL:
#   - docker compose mounts it into /docker-entrypoint-initdb.d/ of postgres:17-alpine;
#   - the Kubernetes postgres StatefulSet gets it from a ConfigMap (kustomize configMapGenerator);
#   - CI runs it against its postgres:17 service container (PGHOST/PGPASSWORD set);
#   - nix/dev-services.sh runs it against the development PostgreSQL (over TCP, with the fixed
#     development passwords and AI_AGENTS_OWNER_CREATEDB=true).
# The official image runs it once, on an empty data directory, as the superuser
# ($POSTGRES_USER) over the Unix socket. Running it again is harmless: it creates what is
# missing, resets the two passwords and brings the privileges in line.
#
# Roles (cluster-wide, so they belong to the deployment, not to the migrations):
#   ai_agents_owner  LOGIN, not superuser, no BYPASSRLS; owns database ai_agents and runs the
#                    migrations (`ai-agents-api migrate`). CREATEDB only if
#                    AI_AGENTS_OWNER_CREATEDB=true (CI: the tests create throwaway databases).
#   ai_agents_app    LOGIN, not superuser, no BYPASSRLS, owns nothing: the role of the API and
#                    the worker. ALTER DEFAULT PRIVILEGES gives it SELECT, and only SELECT, on
#                    the tables the owner creates: the migration history (_sqlx_migrations)
#                    stays read-only, so stolen app credentials cannot make migrations re-run
#                    or break. Each migration grants INSERT/UPDATE/DELETE on its own tables.
#
# Environment (passwords are read by psql's \getenv, so psql 15 or newer: they never appear in
# a command line or in the SQL text):
#   AI_AGENTS_OWNER_DB_PASSWORD  required
#   AI_AGENTS_APP_DB_PASSWORD    required
#   AI_AGENTS_OWNER_CREATEDB     optional, "true" to grant CREATEDB to the owner (default false)
#   POSTGRES_USER, POSTGRES_DB   the superuser and the database to connect to
#                                (default postgres/postgres, as the official image)
set -euo pipefail

: "${AI_AGENTS_OWNER_DB_PASSWORD:?AI_AGENTS_OWNER_DB_PASSWORD must be set (password of role ai_agents_owner)}"
: "${AI_AGENTS_APP_DB_PASSWORD:?AI_AGENTS_APP_DB_PASSWORD must be set (password of role ai_agents_app)}"

createdb_attr=NOCREATEDB
if [[ "${AI_AGENTS_OWNER_CREATEDB:-false}" == "true" ]]; then
    createdb_attr=CREATEDB
fi

psql_super() {
    psql --no-psqlrc -v ON_ERROR_STOP=1 --username "${POSTGRES_USER:-postgres}" "$@"
}

# Roles and database, connected to the maintenance database.
psql_super --dbname "${POSTGRES_DB:-postgres}" -v createdb_attr="$createdb_attr" <<'SQL'
\getenv owner_password AI_AGENTS_OWNER_DB_PASSWORD
\getenv app_password AI_AGENTS_APP_DB_PASSWORD

SELECT 'CREATE ROLE ai_agents_owner'
WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'ai_agents_owner') \gexec
SELECT 'CREATE ROLE ai_agents_app'
WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'ai_agents_app') \gexec

-- Only a superuser may even mention SUPERUSER/BYPASSRLS; a managed service's admin (not a
-- superuser) creates roles without them, which is the same.
SELECT rolsuper AS is_superuser FROM pg_roles WHERE rolname = current_user \gset
\if :is_superuser
  \set privileged_attrs 'NOSUPERUSER NOBYPASSRLS NOREPLICATION'
\else
  \set privileged_attrs ''
\endif
SELECT format('ALTER ROLE ai_agents_owner LOGIN NOCREATEROLE %s %s PASSWORD %L',
              :'createdb_attr', :'privileged_attrs', :'owner_password') \gexec
SELECT format('ALTER ROLE ai_agents_app LOGIN NOCREATEROLE NOCREATEDB %s PASSWORD %L',
              :'privileged_attrs', :'app_password') \gexec

-- A non-superuser admin must be a member of the owner role to create its database and set
-- its default privileges (PostgreSQL 16+ no longer implies it for CREATEROLE).
SELECT format('GRANT ai_agents_owner TO %I', current_user)
WHERE NOT :'is_superuser'::boolean AND NOT pg_has_role(current_user, 'ai_agents_owner', 'USAGE') \gexec

SELECT 'CREATE DATABASE ai_agents OWNER ai_agents_owner ENCODING ''UTF8'' TEMPLATE template0'
WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = 'ai_agents') \gexec

REVOKE ALL ON DATABASE ai_agents FROM PUBLIC;
GRANT CONNECT, TEMPORARY ON DATABASE ai_agents TO ai_agents_app;
SQL

# Privileges inside the database: the app role may read what the owner creates in `public`,
# now and later (default privileges are keyed on the creating role: the migrations run as
# ai_agents_owner); writes come from the migrations' own GRANTs. The REVOKEs bring a database
# set up by an older version of this script in line when it is run again.
psql_super --dbname ai_agents <<'SQL'
ALTER SCHEMA public OWNER TO ai_agents_owner;
REVOKE CREATE ON SCHEMA public FROM PUBLIC;
GRANT USAGE ON SCHEMA public TO ai_agents_app;
ALTER DEFAULT PRIVILEGES FOR ROLE ai_agents_owner IN SCHEMA public
    REVOKE INSERT, UPDATE, DELETE, TRUNCATE ON TABLES FROM ai_agents_app;
ALTER DEFAULT PRIVILEGES FOR ROLE ai_agents_owner IN SCHEMA public
    GRANT SELECT ON TABLES TO ai_agents_app;
ALTER DEFAULT PRIVILEGES FOR ROLE ai_agents_owner IN SCHEMA public
    GRANT USAGE, SELECT ON SEQUENCES TO ai_agents_app;
SELECT 'REVOKE INSERT, UPDATE, DELETE, TRUNCATE ON public._sqlx_migrations FROM ai_agents_app'
WHERE to_regclass('public._sqlx_migrations') IS NOT NULL \gexec
SQL

echo "init-roles: roles ai_agents_owner, ai_agents_app and database ai_agents are ready"
