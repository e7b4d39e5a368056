#!/usr/bin/env bash
# Migrations must run on PostgreSQL 15 as well as 17: apply, revert, re-apply with the real
# `ai-agents-api migrate` on a throw-away PostgreSQL 15 (Debian's binaries) as the non-superuser
# schema owner, and check that up -> down (every migration) -> up leaves the same schema.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

pg15=/usr/lib/postgresql/15/bin
api=${AI_AGENTS_API_BIN:-target/debug/ai-agents-api}
[ -x "$pg15/initdb" ] || { echo "PostgreSQL 15 binaries missing in $pg15" >&2; exit 1; }
[ -x "$api" ] || cargo build --locked --bin ai-agents-api

export AI_AGENTS_DEV_DIR="${AI_AGENTS_PG15_DEV_DIR:-$PWD/.dev/ci-pg15}"
export AI_AGENTS_DEV_PG_PORT="${AI_AGENTS_PG15_PORT:-25533}"
export AI_AGENTS_DEV_REDIS_PORT="${AI_AGENTS_PG15_REDIS_PORT:-26480}"
export AI_AGENTS_PG_BIN=$pg15
trap 'nix/dev-services.sh stop >/dev/null 2>&1 || true' EXIT
nix/dev-services.sh start
eval "$(nix/dev-services.sh env)"
export AI_AGENTS_ENVIRONMENT=test AI_AGENTS_LOG_FORMAT=json AI_AGENTS_LOG_LEVEL=warn

schema() {
    PGPASSWORD=ai_agents_owner "$pg15/pg_dump" --schema-only --no-owner \
        -h 127.0.0.1 -p "$AI_AGENTS_DEV_PG_PORT" -U ai_agents_owner ai_agents \
        | grep -v -e '^--' -e '^$' -e '_sqlx_migrations' -e 'SET ' -e 'set_config' -e '^\\restrict' -e '^\\unrestrict'
}
tables() {
    PGPASSWORD=ai_agents_owner psql -At -h 127.0.0.1 -p "$AI_AGENTS_DEV_PG_PORT" -U ai_agents_owner ai_agents \
        -c "SELECT string_agg(tablename, ',' ORDER BY tablename) FROM pg_tables WHERE schemaname = 'public' AND tablename <> '_sqlx_migrations'"
}

"$api" migrate
"$api" migrate          # re-running is a no-op
first=$(schema)
echo "after migrate: tables $(tables)"
# `migrate revert` undoes the last migration: once per migration takes the schema back to empty,
# and one more is a no-op.
count=$(find migrations -name '*.up.sql' | wc -l)
for _ in $(seq "$count"); do "$api" migrate revert; done
"$api" migrate revert
after_revert=$(tables)
echo "after $count reverts: tables '${after_revert}'"
[ -z "$after_revert" ] || { echo "revert left tables: $after_revert" >&2; exit 1; }
"$api" migrate
second=$(schema)
if [ "$first" != "$second" ]; then
    diff <(echo "$first") <(echo "$second") >&2 || true
    echo "up -> down -> up changed the schema" >&2
    exit 1
fi
echo "PostgreSQL 15: migrate, revert, migrate: same schema ($(echo "$first" | wc -l) lines of DDL)"
