#!/usr/bin/env bash
# Install diffatlas and what it needs on a fresh Linux machine with Python >= 3.10: bash scripts/setup.sh [EXTRAS]
# Outside a virtual (or conda) environment it creates and uses the project's own, .venv (see env.sh), with
# access to the packages the Python already has (--system-site-packages), so a torch installed there is
# kept; then `.venv/bin/diffatlas` is the command (or `source .venv/bin/activate` once, then `diffatlas`).
# The pinned CPU build of torch goes in first: an unpinned torch requirement with no torch installed would
# pull a multi-GB CUDA build. On a GPU machine, install your CUDA torch first.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/env.sh
if [ "$DIFFATLAS_PY" != "$DIFFATLAS_BASE_PY" ] && [ ! -x "$DIFFATLAS_PY" ]; then
  echo "setup: creating the virtual environment $DIFFATLAS_VENV with $DIFFATLAS_BASE_PY"
  if ! "$DIFFATLAS_BASE_PY" -m venv --system-site-packages "$DIFFATLAS_VENV"; then
    rm -rf "$DIFFATLAS_VENV"
    echo "setup: error: '$DIFFATLAS_BASE_PY -m venv' failed; on Debian/Ubuntu install it with: apt-get install python3-venv" >&2
    exit 2
  fi
fi
PY=$DIFFATLAS_PY
if ! "$PY" -c "import torch" 2>/dev/null; then
  echo "setup: installing torch ${DIFFATLAS_TORCH:-2.13.0} (CPU build) into $("$PY" -c 'import sys; print(sys.prefix)')"
  "$PY" -m pip install --quiet "torch==${DIFFATLAS_TORCH:-2.13.0}"
fi
extras=${1:-}
echo "setup: installing diffatlas${extras} and its requirements"
"$PY" -m pip install --quiet -e ".${extras}"
if [ "$PY" = "$DIFFATLAS_VENV/bin/python" ]; then
  echo "setup: done; run $DIFFATLAS_VENV/bin/diffatlas (or 'source $DIFFATLAS_VENV/bin/activate' first, then diffatlas)"
else
  echo "setup: done; diffatlas is installed in $("$PY" -c 'import sys; print(sys.prefix)')"
fi
