# Sourced by setup.sh and test.sh. Sets DIFFATLAS_BASE_PY (the Python asked for: $PYTHON, else python3)
# and DIFFATLAS_PY (the Python diffatlas is installed into and run with):
#   - the asked-for Python itself when it is a virtual or conda environment (an activated one included);
#   - otherwise the project's own virtual environment $DIFFATLAS_VENV (default .venv), which setup.sh
#     creates from it. Stock Debian/Ubuntu Pythons refuse `pip install` outside a virtual environment
#     (PEP 668, their EXTERNALLY-MANAGED marker), and a system Python is best left alone anyway.
DIFFATLAS_BASE_PY=${PYTHON:-python3}
DIFFATLAS_VENV=${DIFFATLAS_VENV:-.venv}
if "$DIFFATLAS_BASE_PY" -c 'import os, sys
sys.exit(0 if sys.prefix != sys.base_prefix or os.path.isdir(os.path.join(sys.prefix, "conda-meta")) else 1)' \
    2>/dev/null; then
  DIFFATLAS_PY=$DIFFATLAS_BASE_PY
else
  DIFFATLAS_PY=$DIFFATLAS_VENV/bin/python
fi
