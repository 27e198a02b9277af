#!/usr/bin/env bash
# Creates .venv (if missing) and installs requirements.txt into it. Used by start.sh and test.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
stamp=.venv/.requirements.sha256
want=$(cat requirements.txt pyproject.toml | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  .venv/bin/python -m pip install -q --upgrade pip
  # torch/torchvision are pinned exactly in requirements.txt so pip never pulls a newer build.
  .venv/bin/python -m pip install -q -r requirements.txt
  # The project itself, editable and without dependencies (requirements.txt pins them): gives the
  # `capstudio` command and makes pipeline/db/curation_app importable from anywhere.
  .venv/bin/python -m pip install -q --no-deps --no-build-isolation -e .
  echo "$want" > "$stamp"
fi
# Native CPU decode kernels (AVX512-BF16 CPUs only; CAPSTUDIO_NATIVE_KERNELS=0 skips them). Built
# here, never inside a user's request; a failure only warns, and decoding falls back to
# bitsandbytes' and torch's ops (pipeline/student/kernels.py).
.venv/bin/python -m pipeline.student.kernels \
  || echo "warning: native kernels not built; decoding uses bitsandbytes' and torch's ops" >&2
