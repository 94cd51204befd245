#!/usr/bin/env bash
# The CPU replication of arXiv 2402.13369 in one sitting: its three study files run, each exported
# under results/ with its report, then the summary that decides the paper's claims (results/replication).
#
#   scripts/replication.sh [OUT]      # OUT: where runs and ledgers go, relative to the repository
#                                     # (default: studies-out)
#
# Resumable: run it again after an interruption and every finished run is kept. WORKERS (default 2,
# the development machine's cores) sets the study workers. Each part's wall time is appended to
# OUT/wall.txt.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-studies-out}
workers=${WORKERS:-2}
parts=(replication-digits replication-digits-edm replication-size)
mkdir -p "$out"
t0=$(date +%s)
for part in "${parts[@]}"; do
  start=$(date +%s)
  diffatlas study run "studies/$part.yaml" --out "$out/$part" --workers "$workers"
  diffatlas study export "studies/$part.yaml" "results/$part" --out "$out/$part"
  diffatlas report "results/$part"
  echo "$part: $(( $(date +%s) - start )) s wall (study run, export and report, $workers workers)" | tee -a "$out/wall.txt"
done
diffatlas report "${parts[@]/#/results/}" -o results/replication
echo "replication: $(( $(date +%s) - t0 )) s wall (all parts and the summary)" | tee -a "$out/wall.txt"
