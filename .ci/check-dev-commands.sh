#!/usr/bin/env bash
# The README's two quick-start commands, run for real (nix/dev-services.sh up and test):
#   1. `up` from a state directory that does not exist yet: /health/ready answers 200,
#      `ai-agents-worker ping` gets a worker's answer, a tenant is stored; SIGINT to its
#      process group (what Ctrl-C in a terminal does) ends it with 130 and leaves no process
#      behind (none carries the run's marker variable), the data directory stays;
#   2. `up` again on that state: the tenant is still there (same data, same token); a second
#      `up` beside it fails naming the busy API port and leaves the first one serving;
#   3. `up` with the services already running: after Ctrl-C they still run;
#   4. `test --run COMMAND`: COMMAND sees the test services' URLs, its exit status is the
#      command's, and the services it started are stopped;
#   5. missing prerequisites: as a user, the exact `sudo apt-get install …` line and the
#      rustup hint; as root, apt-get is run without a question (a stub records it);
#   6. the role set-up script (k8s/postgres/init-roles.sh) missing: `start` names it and
#      starts nothing;
#   7. `up --watch` when watchexec is installed (else skipped, saying so: compiling it takes
#      minutes): a new file in src/ restarts the API and the worker; Ctrl-C ends it all.
# Its own ports, state in a temporary directory: running services are left alone.
# Called by .ci/run; runs alone too: bash .ci/check-dev-commands.sh (builds if needed).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
root=$(pwd)
script=$root/nix/dev-services.sh

readonly PG_PORT=25535 REDIS_PORT=26482 API_PORT=18535 TEST_PG_PORT=25536 TEST_REDIS_PORT=26483

tmp=$(mktemp -d)
chmod 755 "$tmp" # as root, the servers run as another user, who must reach the state
state=$tmp/dev
export AI_AGENTS_DEV_DIR=$state AI_AGENTS_DEV_PG_PORT=$PG_PORT AI_AGENTS_DEV_REDIS_PORT=$REDIS_PORT
export AI_AGENTS_TEST_PG_PORT=$TEST_PG_PORT AI_AGENTS_TEST_REDIS_PORT=$TEST_REDIS_PORT
export AI_AGENTS_BIND_ADDR=127.0.0.1:$API_PORT
unset AI_AGENTS_ADMIN_TOKEN
eval "$("$script" env)"
marker=check-dev-commands-$$-$RANDOM
up_pid=

fail() {
  printf 'check-dev-commands: FAIL: %s\n' "$*" >&2
  [[ ! -f $tmp/up.log ]] || { echo "--- last lines of up:" >&2 && tail -n 30 "$tmp/up.log" >&2; }
  exit 1
}
ok() { printf 'check-dev-commands: ok: %s\n' "$*"; }

# run_pids [marked]: processes started by this check's `up` and `test` runs. Each inherits
# the marker variable, but redis-server overwrites its environment with its process title:
# it is found by its port (unless only the marked ones are asked for).
run_pids() {
  local proc
  for proc in /proc/[0-9]*; do
    if grep -qzx "AI_AGENTS_CHECK_RUN=$marker" "$proc/environ" 2>/dev/null ||
      { [[ ${1:-} != marked && $(cat "$proc/comm" 2>/dev/null) == redis-server ]] &&
        tr '\0' ' ' <"$proc/cmdline" 2>/dev/null | grep -qE ":($REDIS_PORT|$TEST_REDIS_PORT) "; }; then
      echo "${proc#/proc/}"
    fi
  done
}

cleanup() {
  local pids
  [[ -z $up_pid ]] || kill -TERM "$up_pid" 2>/dev/null || true
  "$script" stop >/dev/null 2>&1 || true
  AI_AGENTS_DEV_DIR=$state/test "$script" stop >/dev/null 2>&1 || true
  mapfile -t pids < <(run_pids)
  ((${#pids[@]} == 0)) || kill -KILL "${pids[@]}" 2>/dev/null || true
  rm -rf -- "$tmp"
}
trap cleanup EXIT

http_status() { curl -s -o /dev/null -w '%{http_code}' --max-time 5 "$@" || true; }

# start_up [ARGS]: `up` in the background as a job of its own process group (job control), as a
# terminal runs it, so that the group can be signalled like Ctrl-C; with SIGINT at its default
# even when this check was started with it ignored (in the background, under nohup), as a
# shell ignores it for background commands and that is inherited.
start_up() {
  set -m
  AI_AGENTS_CHECK_RUN=$marker env --default-signal=INT "$script" up "$@" >"$tmp/up.log" 2>&1 &
  up_pid=$!
  set +m
}

wait_ready() {
  local i
  for ((i = 0; i < 600; i++)); do
    [[ $(http_status "http://127.0.0.1:$API_PORT/health/ready") != 200 ]] || return 0
    kill -0 "$up_pid" 2>/dev/null || fail "up exited before /health/ready answered 200"
    sleep 0.5
  done
  fail "/health/ready did not answer 200 within 300 s"
}

# printed PATTERN: whether up's output shows PATTERN within 10 s. up prints its banner once its
# own poll sees the API serve (every 0.2 s), which may be a moment after this check saw it ready.
printed() {
  local i
  for ((i = 0; i < 50; i++)); do
    grep -q -- "$1" "$tmp/up.log" && return 0
    sleep 0.2
  done
  return 1
}

# ctrl_c [services-stay]: SIGINT to up's process group; up must end with 130, and nothing
# it started may remain — but the services with services-stay: they ran before it.
ctrl_c() {
  local i status=0 left port ports=("$API_PORT" "$PG_PORT" "$REDIS_PORT") which=''
  if [[ ${1:-} == services-stay ]]; then
    ports=("$API_PORT")
    which=marked
  fi
  kill -INT -- "-$up_pid"
  for ((i = 0; i < 120; i++)); do
    kill -0 "$up_pid" 2>/dev/null || break
    sleep 0.5
  done
  kill -0 "$up_pid" 2>/dev/null && fail "up still runs 60 s after SIGINT"
  wait "$up_pid" || status=$?
  up_pid=
  [[ $status == 130 ]] || fail "up ended with status $status after SIGINT, not 130"
  for ((i = 0; i < 20; i++)); do
    left=$(run_pids "$which")
    [[ -n $left ]] || break
    sleep 0.5
  done
  [[ -z $left ]] || fail "processes left behind after SIGINT: $(ps -o pid=,args= -p "${left//$'\n'/,}")"
  for port in "${ports[@]}"; do
    ! (: <"/dev/tcp/127.0.0.1/$port") 2>/dev/null || fail "port $port still open after SIGINT"
  done
}

# ---- 1. from nothing
[[ ! -e $state ]] || fail "$state exists before the first run"
start_up
wait_ready
ok "up from an empty state: /health/ready 200"
pong=$("${CARGO_TARGET_DIR:-$root/target}/debug/ai-agents-worker" ping) || fail "ai-agents-worker ping got no answer"
ok "worker ping: $pong"
token=$(<"$state/admin-token")
[[ $(http_status -X POST "http://127.0.0.1:$API_PORT/api/v1/tenants" \
  -H "Authorization: Bearer $token" -H 'content-type: application/json' \
  -d '{"tenant_id":"check","name":"Check","servicedesk_url":"https://desk.example.com",
       "servicedesk_api_key":"k","webhook_signing_secret":"s"}') == 201 ]] ||
  fail "creating a tenant with the printed development token did not answer 201"
printed "http://localhost:$API_PORT/docs" || fail "up did not print the /docs URL"
printed "Bearer $token" || fail "up did not print the development token"
ctrl_c
[[ -f $state/postgres/PG_VERSION ]] || fail "the data directory is gone after Ctrl-C"
ok "Ctrl-C: status 130, no process left, data kept"

# ---- 2. again, and a second one beside it
start_up
wait_ready
[[ $(http_status "http://127.0.0.1:$API_PORT/api/v1/tenants/check" -H "Authorization: Bearer $token") == 200 ]] ||
  fail "the tenant of the first run is gone (or the token changed)"
ok "up again: the first run's tenant is there, same token"
status=0
second=$(timeout 120 "$script" up 2>&1) || status=$?
((status != 0)) || fail "a second up beside the first one succeeded"
[[ $second == *"port $API_PORT on 127.0.0.1 is already in use"* ]] ||
  fail "a second up did not name the busy port: $second"
[[ $(http_status "http://127.0.0.1:$API_PORT/health/ready") == 200 ]] || fail "the first up stopped serving"
ok "a second up beside it: refused naming port $API_PORT, the first still serves"
ctrl_c
ok "Ctrl-C again: nothing left"

# ---- 3. services already running
"$script" start 2>/dev/null
start_up
wait_ready
ctrl_c services-stay
"$script" status >/dev/null || fail "up stopped services it had not started"
"$script" stop 2>/dev/null
ok "services started before up still run after its Ctrl-C"

# ---- 4. test --run
status=0
# shellcheck disable=SC2016 # expanded by the command that test runs, not here
out=$("$script" test --run bash -c 'echo "db=$AI_AGENTS_DATABASE_URL redis=$AI_AGENTS_REDIS_URL"; exit 3' 2>&1) ||
  status=$?
[[ $status == 3 ]] || fail "test --run: status $status, not the command's 3: $out"
[[ $out == *"db=postgres://ai_agents_owner:ai_agents_owner@127.0.0.1:$TEST_PG_PORT/ai_agents redis=redis://127.0.0.1:$TEST_REDIS_PORT"* ]] ||
  fail "test --run: the command did not get the test services' URLs: $out"
AI_AGENTS_DEV_DIR=$state/test "$script" status >/dev/null && fail "test left its services running"
ok "test --run: the command's status, the test services' URLs, services stopped"

# ---- 5. missing prerequisites
fakebin=$tmp/bin
mkdir -p "$fakebin"
chmod 755 "$fakebin"
for tool in /usr/local/bin/* /usr/bin/* /bin/* /usr/sbin/* /sbin/*; do
  name=${tool##*/}
  case $name in redis-server | redis-cli | cargo) continue ;; esac
  [[ -e $fakebin/$name ]] || ln -s "$tool" "$fakebin/$name"
done
cp "$script" "$tmp/dev-services.sh" # readable by any user, wherever the checkout is
chmod 755 "$tmp/dev-services.sh"
no_redis=(env -i "PATH=$fakebin" "HOME=$tmp" "AI_AGENTS_DEV_DIR=$tmp/nobody" bash "$tmp/dev-services.sh" up)
if ((EUID == 0)); then
  status=0
  out=$(runuser -u nobody -- "${no_redis[@]}" 2>&1) || status=$?
else
  status=0
  out=$("${no_redis[@]}" 2>&1) || status=$?
fi
((status != 0)) || fail "up without redis-server and cargo succeeded"
[[ $out == *"  sudo apt-get install -y redis-server"* && $out == *"https://sh.rustup.rs"* ]] ||
  fail "up without redis-server and cargo (as a user) did not print the sudo line and the rustup hint: $out"
ok "missing Redis and cargo as a user: the sudo line and the rustup hint"
if ((EUID == 0)); then
  rm -f "$fakebin/apt-get" # a symlink to the real one: never write through it
  printf '#!/bin/sh\necho "$*" >>%s/apt-get.calls\n' "$tmp" >"$fakebin/apt-get"
  chmod 755 "$fakebin/apt-get"
  out=$("${no_redis[@]}" 2>&1) && fail "up without cargo succeeded"
  grep -qx -- "install -y -qq redis-server" "$tmp/apt-get.calls" ||
    fail "as root, up did not run apt-get install -y redis-server: $(cat "$tmp/apt-get.calls" 2>/dev/null) $out"
  ok "missing Redis as root: apt-get install -y redis-server, no question"
fi

# ---- 6. the role set-up script missing
status=0
out=$(AI_AGENTS_INIT_ROLES_SCRIPT=$tmp/no-init-roles.sh AI_AGENTS_DEV_DIR=$tmp/no-roles \
  "$script" start 2>&1) || status=$?
((status != 0)) || fail "start without the role set-up script succeeded"
[[ $out == *"the role set-up script $tmp/no-init-roles.sh does not exist"* ]] ||
  fail "start without the role set-up script did not name it: $out"
for port in "$PG_PORT" "$REDIS_PORT"; do
  ! (: <"/dev/tcp/127.0.0.1/$port") 2>/dev/null ||
    fail "start without the role set-up script left port $port open"
done
ok "the role set-up script missing: start names it and starts nothing"

# ---- 7. --watch
if command -v watchexec >/dev/null; then
  touched=$root/src/check-dev-commands.touch
  trap 'rm -f "$touched"; cleanup' EXIT
  start_up --watch
  wait_ready
  : >"$touched"
  # The API logs "listening" once it serves, the worker "worker ready".
  restarted() { (($(grep -c ' listening' "$tmp/up.log") >= 2 && $(grep -c 'worker ready' "$tmp/up.log") >= 2)); }
  for ((i = 0; i < 240; i++)); do
    ! restarted || break
    sleep 0.5
  done
  restarted || fail "up --watch did not restart the API and the worker after a change in src/"
  wait_ready
  ctrl_c
  rm -f "$touched"
  ok "up --watch: a change in src/ restarted the API and the worker; Ctrl-C left nothing"
else
  echo "check-dev-commands: skipped: up --watch (watchexec is not installed; up --watch installs it)"
fi

echo "check-dev-commands: OK"
