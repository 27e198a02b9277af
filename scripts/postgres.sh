#!/usr/bin/env bash
# A throw-away PostgreSQL server for the tests (used by scripts/test.sh and tests/pg.py).
#
#   bash scripts/postgres.sh start DIR   # initdb in DIR, start on a free loopback port, print the URL
#   bash scripts/postgres.sh stop DIR    # stop it (the caller removes DIR)
#
# Installs Debian's `postgresql` package when the server binaries are missing and we are root
# (unless CAPSTUDIO_PG_NO_INSTALL=1). The server refuses to run as root, so as root it runs as the
# `postgres` user (created by the package). Data goes to DIR only; nothing is fsynced (a test server).
set -euo pipefail

find_bindir() {
  local d
  for d in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r); do
    if [ -x "$d/initdb" ] && [ -x "$d/pg_ctl" ]; then echo "$d"; return 0; fi
  done
  if command -v pg_ctl >/dev/null 2>&1 && command -v initdb >/dev/null 2>&1; then
    dirname "$(command -v pg_ctl)"; return 0
  fi
  return 1
}

install_postgres() {
  if [ "${CAPSTUDIO_PG_NO_INSTALL:-0}" = 1 ]; then
    echo "postgres.sh: PostgreSQL is not installed (apt-get install postgresql)" >&2; return 1
  fi
  if [ "$(id -u)" != 0 ]; then
    echo "postgres.sh: PostgreSQL is not installed and we are not root to install it" >&2; return 1
  fi
  echo "postgres.sh: installing Debian's postgresql package" >&2
  # the package's own cluster is not used (and may fail to start without an init system)
  apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
}

# run a command as the server's owner: ourselves, or `postgres` when we are root
as_owner() {
  if [ "$(id -u)" = 0 ]; then
    runuser -u postgres -- "$@"
  else
    "$@"
  fi
}

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

start() {
  local dir=$1 bindir port
  bindir=$(find_bindir) || { install_postgres && bindir=$(find_bindir); } || return 1
  mkdir -p "$dir"
  if [ "$(id -u)" = 0 ]; then
    id postgres >/dev/null 2>&1 || useradd --system --home-dir "$dir" --shell /usr/sbin/nologin postgres
    chown postgres "$dir"
    chmod 755 "$dir"
    runuser -u postgres -- test -w "$dir" \
      || { echo "postgres.sh: user postgres cannot reach $dir (make its parent folders world-searchable)" >&2; return 1; }
  fi
  as_owner "$bindir/initdb" -D "$dir/data" -U postgres --auth=trust -E UTF8 --locale=C.UTF-8 --no-sync \
    >"$dir/initdb.log" 2>&1 || { cat "$dir/initdb.log" >&2; return 1; }
  port=$(free_port)
  # fsync off: a throw-away server whose data dies with the test run
  as_owner "$bindir/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 start -o \
    "-c listen_addresses=127.0.0.1 -p $port -k $dir -c max_connections=200 -c fsync=off \
     -c synchronous_commit=off -c full_page_writes=off" >/dev/null \
    || { cat "$dir/server.log" >&2; return 1; }
  echo "$bindir" >"$dir/bindir"
  echo "postgresql+psycopg://postgres@127.0.0.1:$port/postgres"
}

stop() {
  local dir=$1
  [ -f "$dir/bindir" ] || return 0
  as_owner "$(cat "$dir/bindir")/pg_ctl" -D "$dir/data" -m immediate stop >/dev/null 2>&1 || true
}

case "${1:-}" in
  start) start "${2:?usage: postgres.sh start DIR}" ;;
  stop) stop "${2:?usage: postgres.sh stop DIR}" ;;
  *) echo "usage: postgres.sh start|stop DIR" >&2; exit 2 ;;
esac
