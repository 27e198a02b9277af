#!/usr/bin/env bash
# Creates .venv (if missing) and installs requirements.txt into it. Used by start.sh and test.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
stamp=.venv/.requirements.sha256
want=$(sha256sum requirements.txt | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  .venv/bin/python -m pip install -q --upgrade pip
  # torch/torchvision are pinned exactly in requirements.txt so pip never pulls a newer build.
  .venv/bin/python -m pip install -q -r requirements.txt
  echo "$want" > "$stamp"
fi
