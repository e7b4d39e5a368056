#!/usr/bin/env bash
# The static musl release binaries: built with cargo (the Nix flake builds the same target),
# checked with `file`, then run alone in an empty root as uid 65532 — as in the scratch
# images — where the API serves /health against the local services and answers its own
# `healthcheck`, and the worker answers `ping`.
# Needs the local services' variables (eval "$(nix/dev-services.sh env)").
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# `env -i` clears PATH, and chroot lives in /usr/sbin: call it by its full path.
chroot=$(command -v chroot)

target=x86_64-unknown-linux-musl
cargo build --release --locked --target "$target" --bins
out=target/$target/release

for name in ai-agents-api ai-agents-worker; do
    description=$(file "$out/$name")
    echo "$description"
    case "$description" in
        *"statically linked"* | *"static-pie linked"*) ;;
        *) echo "$name is not statically linked" >&2; exit 1 ;;
    esac
    printf '%s size: %s bytes (%s MiB)\n' "$name" "$(stat -c %s "$out/$name")" \
        "$(awk -v s="$(stat -c %s "$out/$name")" 'BEGIN { printf "%.1f", s / 1048576 }')"
done

jail=$(mktemp -d)
chmod 755 "$jail"
cp "$out/ai-agents-api" "$out/ai-agents-worker" "$jail/"
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    rm -rf "$jail"
}
trap cleanup EXIT

version=$(env -i "$chroot" --userspec=65532:65532 "$jail" /ai-agents-api --version)
echo "in an empty root as 65532: $version"
[ "$version" = "ai-agents-api $(awk -F'"' '/^version/ { print $2; exit }' Cargo.toml)" ]
env -i "$chroot" --userspec=65532:65532 "$jail" /ai-agents-worker --version

port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
key=$(head -c 32 /dev/urandom | base64)
token=$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')
run_env=(
    AI_AGENTS_ENVIRONMENT=production
    AI_AGENTS_BIND_ADDR="127.0.0.1:$port"
    AI_AGENTS_DATABASE_URL="$AI_AGENTS_DATABASE_URL"
    AI_AGENTS_REDIS_URL="$AI_AGENTS_REDIS_URL"
    AI_AGENTS_QUEUE_PREFIX="static-check-$$"
    AI_AGENTS_RUN_MIGRATIONS=true
    AI_AGENTS_ADMIN_TOKEN="$token"
    AI_AGENTS_ENCRYPTION_KEY="$key"
)
env -i "${run_env[@]}" "$chroot" --userspec=65532:65532 "$jail" /ai-agents-api >"$jail.api.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 100); do
    if env -i "${run_env[@]}" "$chroot" --userspec=65532:65532 "$jail" /ai-agents-api healthcheck 2>/dev/null; then
        break
    fi
    sleep 0.1
done
env -i "${run_env[@]}" "$chroot" --userspec=65532:65532 "$jail" /ai-agents-api healthcheck
echo "healthcheck from the empty root: exit 0"
ready=$(python3 -c "import urllib.request; print(urllib.request.urlopen('http://127.0.0.1:$port/health/ready', timeout=5).read().decode())")
echo "GET /health/ready: $ready"
case "$ready" in *'"ready"'*) ;; *) echo "not ready" >&2; cat "$jail.api.log" >&2; exit 1 ;; esac

env -i "${run_env[@]}" "$chroot" --userspec=65532:65532 "$jail" /ai-agents-worker >"$jail.worker.log" 2>&1 &
pids+=($!)
pong=$(env -i "${run_env[@]}" "$chroot" --userspec=65532:65532 "$jail" /ai-agents-worker ping)
echo "worker ping from the empty root: $pong"
kill -TERM "${pids[@]}"
for pid in "${pids[@]}"; do
    wait "$pid" || { echo "process $pid did not exit 0 after SIGTERM" >&2; exit 1; }
done
pids=()
echo "both exited 0 after SIGTERM"
rm -f "$jail.api.log" "$jail.worker.log"
