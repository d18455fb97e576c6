#!/usr/bin/env bash
# Run every test: unit + integration on SQLite, then the integration suite again on PostgreSQL.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pytest -q "$@"
DUROXIDE_TEST_DB=postgres python -m pytest -q tests/integration "$@"
