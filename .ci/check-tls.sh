#!/usr/bin/env bash
# TLS from the static binaries in an empty root (as in the scratch images): the API reaches
# PostgreSQL with sslmode=require and Redis over rediss://, both with throw-away self-signed
# certificates; and sslmode=verify-full refuses that untrusted certificate, which shows the
# chain is really checked. Needs the local services (eval "$(nix/dev-services.sh env)") and
# the musl release build of .ci/check-static.sh.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# `env -i` clears PATH, and chroot lives in /usr/sbin: call it by its full path.
chroot=$(command -v chroot)

out=${AI_AGENTS_MUSL_DIR:-target/x86_64-unknown-linux-musl/release}
[ -x "$out/ai-agents-api" ] || { echo "build the musl binaries first (.ci/check-static.sh)" >&2; exit 1; }
pg_port=${AI_AGENTS_DEV_PG_PORT:-55432}
psql_admin() { PGPASSWORD=postgres psql -X -q -At -h 127.0.0.1 -p "$pg_port" -U postgres -d postgres "$@"; }
data_dir=$(psql_admin -c "SHOW data_directory")
pg_user=$(stat -c %U "$data_dir")

work=$(mktemp -d)
chmod 755 "$work"
redis_pid=""
api_pid=""
cleanup() {
    if [ -n "$api_pid" ]; then kill "$api_pid" 2>/dev/null || true; fi
    if [ -n "$redis_pid" ]; then kill "$redis_pid" 2>/dev/null || true; fi
    psql_admin -c "ALTER SYSTEM RESET ssl" -c "ALTER SYSTEM RESET ssl_cert_file" \
        -c "ALTER SYSTEM RESET ssl_key_file" -c "SELECT pg_reload_conf()" >/dev/null 2>&1 || true
    rm -rf "$work"
}
trap cleanup EXIT

openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj "/CN=localhost" \
    -keyout "$work/server.key" -out "$work/server.crt" 2>/dev/null
install -o "$pg_user" -m 600 "$work/server.key" "$data_dir/ci-tls.key"
install -o "$pg_user" -m 644 "$work/server.crt" "$data_dir/ci-tls.crt"
psql_admin -c "ALTER SYSTEM SET ssl_cert_file = 'ci-tls.crt'" -c "ALTER SYSTEM SET ssl_key_file = 'ci-tls.key'" \
    -c "ALTER SYSTEM SET ssl = on" -c "SELECT pg_reload_conf()" >/dev/null
sleep 0.5
echo "PostgreSQL ssl: $(psql_admin -c 'SHOW ssl')"

free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
redis_port=$(free_port)
redis-server --port 0 --tls-port "$redis_port" --bind 127.0.0.1 --save '' --appendonly no \
    --tls-cert-file "$work/server.crt" --tls-key-file "$work/server.key" \
    --tls-ca-cert-file "$work/server.crt" --tls-auth-clients no >"$work/redis.log" 2>&1 &
redis_pid=$!

jail="$work/root"
mkdir -m 755 "$jail"
cp "$out/ai-agents-api" "$jail/"
db_tls="${AI_AGENTS_DATABASE_URL}?sslmode=require"
api_port=$(free_port)
run_env=(
    AI_AGENTS_ENVIRONMENT=production
    AI_AGENTS_BIND_ADDR="127.0.0.1:$api_port"
    AI_AGENTS_DATABASE_URL="$db_tls"
    AI_AGENTS_REDIS_URL="rediss://127.0.0.1:$redis_port/#insecure"
    AI_AGENTS_QUEUE_PREFIX="tls-check-$$"
    AI_AGENTS_ADMIN_TOKEN="$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')"
    AI_AGENTS_ENCRYPTION_KEY="$(head -c 32 /dev/urandom | base64)"
)
env -i "${run_env[@]}" "$chroot" --userspec=65532:65532 "$jail" /ai-agents-api >"$work/api.log" 2>&1 &
api_pid=$!
ready=""
for _ in $(seq 1 50); do
    ready=$(python3 - "$api_port" <<'PY' 2>/dev/null || true
import sys, urllib.request, urllib.error
try:
    print(urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/health/ready", timeout=5).read().decode())
except urllib.error.HTTPError as e:
    print(e.read().decode())
PY
)
    case "$ready" in *'"ready"'*) break ;; esac
    sleep 0.2
done
echo "GET /health/ready over TLS to both: $ready"
case "$ready" in *'"ready"'*) ;; *) cat "$work/api.log" >&2; exit 1 ;; esac
tls_in_use=$(psql_admin -c "SELECT count(*) FROM pg_stat_ssl JOIN pg_stat_activity USING (pid) WHERE ssl AND application_name = 'ai-agents'")
echo "PostgreSQL connections of ai-agents using TLS: $tls_in_use"
[ "$tls_in_use" -gt 0 ]
kill "$api_pid"; wait "$api_pid" || true; api_pid=""

# verify-full with an untrusted certificate must be refused.
verify_env=("${run_env[@]}")
verify_env[2]="AI_AGENTS_DATABASE_URL=${AI_AGENTS_DATABASE_URL}?sslmode=verify-full"
if env -i "${verify_env[@]}" AI_AGENTS_DATABASE_CONNECT_TIMEOUT_SECS=3 \
    "$chroot" --userspec=65532:65532 "$jail" /ai-agents-api migrate >"$work/verify.log" 2>&1; then
    echo "sslmode=verify-full accepted a self-signed certificate" >&2
    exit 1
fi
echo "sslmode=verify-full refused the self-signed certificate: $(tail -n 1 "$work/verify.log")"
