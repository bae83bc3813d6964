#!/usr/bin/env bash
# The whole test suite, with everything it needs installed first (see scripts/setup.sh).
# Extra arguments go to pytest, e.g. scripts/test.sh -m "not slow" -x
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh dev
. .venv/bin/activate
ruff check .
mypy  # the whole tree, as configured in pyproject.toml [tool.mypy]
exec python -m pytest -q -p no:cacheprovider "$@"
