#!/usr/bin/env bash
# One-time set-up on a fresh machine: a virtual environment in .venv with torch,
# torchvision (PyPI builds; they run on CPU too) and this package in editable
# mode with its dev extras. Safe to run again: pip skips what is installed.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
NOISE="is ignored: it is neither a file nor a directory"  # this machine's pip config lists absent local indexes
if ! command -v "$PYTHON" >/dev/null || ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 10))'; then
    echo "error: detector needs Python 3.10 or newer with venv; install it (e.g. apt-get install python3 python3-venv) or run PYTHON=/path/to/python3.11 bash scripts/setup.sh" >&2
    exit 2
fi
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
if ! .venv/bin/python -c "import torch, torchvision" 2>/dev/null; then
    # torch and torchvision in one command so pip picks a matching pair.
    # The torch bound is pyproject's (the shipped d2go model is quantized TorchScript; see there).
    .venv/bin/python -m pip install --quiet "torch<2.15" torchvision 2> >(grep -v "$NOISE" >&2)
fi
# The distribution is detector-rt (the import name and the command stay `detector`); a .venv made when it
# was still called `detector` holds that one too, which would claim the same package: remove it.
if .venv/bin/python -m pip show --quiet detector >/dev/null 2>&1; then
    .venv/bin/python -m pip uninstall --quiet --yes detector 2> >(grep -v "$NOISE" >&2)
fi
.venv/bin/python -m pip install --quiet -e ".[dev]" 2> >(grep -v "$NOISE" >&2)
.venv/bin/python -c "import torch, torchvision; print(f'torch {torch.__version__}, torchvision {torchvision.__version__}')"
