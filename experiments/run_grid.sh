#!/usr/bin/env bash
# A comparison grid in the background, resumable: two processes side by side, one torch thread each
# (on 2 cores two 1-thread processes train about 1.4x as many steps per second as one 2-thread
# process: results/remeasure/NOTES.md, fourth sitting). Each claims the cell or sweep it runs and
# passes over the other's; the last to finish writes the report.
#   nohup nice -n 19 experiments/run_grid.sh experiments/grids/transfer.json results/transfer >> results/transfer/sitting.log 2>&1 &
# Arguments after OUT go to each process's `reprkit compare` (for example `--seeds 0 1 2`: this
# sitting trains those seeds, then the ceilings; the grid itself is unchanged).
set -euo pipefail
cd "$(dirname "$0")/.."
grid=${1:?usage: run_grid.sh GRID.json OUT [reprkit compare options]}
out=${2:?usage: run_grid.sh GRID.json OUT [reprkit compare options]}
shift 2
mkdir -p "$out"
export OMP_NUM_THREADS=1
for k in 1 2; do
  .venv/bin/reprkit compare "$grid" --out "$out" "$@" >> "$out/sitting-$k.log" 2>&1 &
done
wait
