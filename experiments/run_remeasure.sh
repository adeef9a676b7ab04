#!/usr/bin/env bash
# The remeasure grid in the background, resumable: one process per shift, side by side, one torch
# thread each (on 2 cores two 1-thread processes train about 1.4x as many steps per second as one
# 2-thread process: results/remeasure/NOTES.md, fourth sitting); then one pass over the whole grid,
# which finds every cell done and writes the analysis.
#   nohup nice -n 19 experiments/run_remeasure.sh >> results/remeasure/sitting.log 2>&1 &
set -euo pipefail
cd "$(dirname "$0")"
PY=../.venv/bin/python
export OMP_NUM_THREADS=1
$PY compare.py --grid grids/remeasure.json --out ../results/remeasure --sources alpaca_mmlu \
    >> ../results/remeasure/sitting-alpaca_mmlu.log 2>&1 &
$PY compare.py --grid grids/remeasure.json --out ../results/remeasure --sources alpaca_short \
    >> ../results/remeasure/sitting-alpaca_short.log 2>&1 &
wait
$PY compare.py --grid grids/remeasure.json --out ../results/remeasure
