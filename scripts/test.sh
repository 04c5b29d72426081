#!/usr/bin/env bash
# The test suite, with set-up first (scripts/setup.sh). Needs ../shared beside the checkout.
# The browser test needs Debian's chromium and chromium-driver: installed here when missing (as root).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then
    if [ "$(id -u)" = 0 ]; then
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null
    else
        echo "warning: chromium/chromedriver missing and not root; the browser test will fail" >&2
    fi
fi
exec .venv/bin/python -m pytest "$@"
