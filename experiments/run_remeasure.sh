#!/usr/bin/env bash
# The remeasure grid in the background, resumable: two processes side by side on the whole grid,
# one torch thread each (on 2 cores two 1-thread processes train about 1.4x as many steps per
# second as one 2-thread process: results/remeasure/NOTES.md, fourth sitting). Each claims the cell
# or sweep it runs and passes over the other's; the last to finish writes the analysis.
#   nohup nice -n 19 experiments/run_remeasure.sh >> results/remeasure/sitting.log 2>&1 &
set -euo pipefail
cd "$(dirname "$0")"
PY=../.venv/bin/python
export OMP_NUM_THREADS=1
for k in 1 2; do
  $PY compare.py --grid grids/remeasure.json --out ../results/remeasure >> ../results/remeasure/sitting-$k.log 2>&1 &
done
wait
