#!/usr/bin/env bash
# Set up (if needed) and run the whole test suite: bash scripts/test.sh [pytest args]
set -euo pipefail
cd "$(dirname "$0")/.."
# The cluster executors' tests need their extras (submitit; ray, which pulls no torch).
bash scripts/setup.sh "[dev,slurm,ray]"
. scripts/env.sh
# Debian packages some tests use, installed when missing (as root, with apt): headless Chromium renders
# report.html for the screenshot tests; Debian's own python3 with python3-venv, a Python that refuses pip
# outside a virtual environment (PEP 668), is what the setup test installs diffatlas on; the Slurm
# executor's tests start a private single-node Slurm (Debian's slurmctld, slurmd, munge).
need=()
command -v chromium >/dev/null 2>&1 || need+=(chromium)
if ! { [ -x /usr/bin/python3 ] && dpkg-query -W -f '${Status}' python3-venv 2>/dev/null | grep -q "ok installed"; }; then
  need+=(python3 python3-venv)
fi
command -v slurmctld >/dev/null 2>&1 || need+=(slurmctld slurmd slurm-client munge)
if [ ${#need[@]} -gt 0 ] && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null) \
    || echo "note: ${need[*]} could not be installed; the tests that need them will be skipped"
fi
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
PATH="$(cd "$(dirname "$DIFFATLAS_PY")" && pwd):$PATH"  # tests that call `diffatlas` get this installation's
export PATH
exec "$DIFFATLAS_PY" -m pytest "$@"
