#!/usr/bin/env bash
# Set up and start the studio: `bash scripts/start.sh` then open http://localhost:8501
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/python -m pipeline init
exec .venv/bin/streamlit run curation_app/streamlit_app.py "$@"
