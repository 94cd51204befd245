#!/usr/bin/env bash
# Set up (if needed) and run the whole test suite: bash scripts/test.sh [pytest args]
set -euo pipefail
cd "$(dirname "$0")/.."
# The cluster executors' tests need their extras (submitit; ray, which pulls no torch).
bash scripts/setup.sh "[dev,slurm,ray]"
# The report's screenshot test renders report.html in headless Chromium (Debian's package).
if ! command -v chromium >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
    || echo "note: chromium could not be installed; the report screenshot test will be skipped"
fi
# The Slurm executor's tests start a private single-node Slurm (Debian's slurmctld, slurmd, munge; root).
if ! command -v slurmctld >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
     slurmctld slurmd slurm-client munge >/dev/null) \
    || echo "note: Slurm could not be installed; the Slurm executor's tests will be skipped"
fi
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
exec "${PYTHON:-python3}" -m pytest "$@"
