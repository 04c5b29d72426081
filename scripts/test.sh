#!/usr/bin/env bash
# The test suite, with set-up first (scripts/setup.sh). Needs ../shared beside the checkout.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m pytest "$@"
