#!/usr/bin/env bash
# Install diffatlas and what it needs on a fresh Linux machine with Python >= 3.10.
# The pinned CPU build of torch goes in first: an unpinned torch requirement with no torch
# installed would pull a multi-GB CUDA build. On a GPU machine, install your CUDA torch first.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if ! "$PY" -c "import torch" 2>/dev/null; then
  "$PY" -m pip install --quiet "torch==${DIFFATLAS_TORCH:-2.13.0}"
fi
extras=${1:-}
"$PY" -m pip install --quiet -e ".${extras}"
