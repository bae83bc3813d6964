#!/usr/bin/env bash
# The demo line on a fresh machine: installs what is needed, generates sample data, trains a model,
# runs the daemon on a sample video and prints what it found. Output under demo-run/.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh train
. .venv/bin/activate
exec python scripts/demo.py "$@"
