#!/usr/bin/env bash
# One-time set-up on a fresh machine: a virtual environment in .venv with torch,
# torchvision (PyPI builds; they run on CPU too) and this package in editable
# mode with its dev extras. Safe to run again: it only installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
if ! .venv/bin/python -c "import detector, torch, torchvision, cv2, pycocotools, pytest" 2>/dev/null; then
    # torch and torchvision in one command so pip picks a matching pair.
    .venv/bin/python -m pip install --quiet torch torchvision
    .venv/bin/python -m pip install --quiet -e ".[dev]"
fi
.venv/bin/python -c "import torch, torchvision; print(f'torch {torch.__version__}, torchvision {torchvision.__version__}')"
