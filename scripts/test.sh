#!/usr/bin/env bash
# Run the test suite: `bash scripts/test.sh` (sets up .venv and Chromium for the browser tests).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# The tests also cover the optional Ray engine: install its pinned extra (the app itself never needs it).
ray_stamp=.venv/.requirements-ray.sha256
ray_want=$(sha256sum requirements-ray.txt | cut -d' ' -f1)
if [ "$(cat "$ray_stamp" 2>/dev/null)" != "$ray_want" ]; then
  .venv/bin/python -m pip install -q -r requirements-ray.txt
  echo "$ray_want" > "$ray_stamp"
fi
if ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
      || echo "warning: could not install chromium; browser tests will be skipped" >&2
  else
    echo "warning: chromium not found (apt-get install chromium); browser tests will be skipped" >&2
  fi
fi
# A throw-away PostgreSQL server for the store tests that run on both backends (scripts/postgres.sh
# installs Debian's postgresql package when missing); stopped and deleted when the tests end.
if [ -z "${CAPSTUDIO_TEST_POSTGRES_URL:-}" ]; then
  pg_dir=$(mktemp -d "${TMPDIR:-/tmp}/capstudio-pg.XXXXXX")
  chmod 755 "$pg_dir"  # the server runs as `postgres` when we are root
  trap 'bash scripts/postgres.sh stop "$pg_dir/pg"; rm -rf "$pg_dir"' EXIT
  if pg_url=$(bash scripts/postgres.sh start "$pg_dir/pg"); then
    export CAPSTUDIO_TEST_POSTGRES_URL=$pg_url
  elif [ -n "${CI:-}" ]; then
    echo "error: could not start PostgreSQL; the PostgreSQL tests cannot run" >&2
    exit 1
  else
    echo "warning: could not start PostgreSQL; its tests will be skipped" >&2
  fi
fi
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
# Lint first (pyproject.toml's [tool.ruff]): a failure stops the run before the tests.
.venv/bin/ruff check .
.venv/bin/python -m pytest -q "$@"
