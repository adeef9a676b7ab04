#!/usr/bin/env bash
# The remeasure grid in the background, resumable: the evidence shift's source first, then the rest.
#   nohup nice -n 19 experiments/run_remeasure.sh > results/remeasure/sitting.log 2>&1 &
set -euo pipefail
cd "$(dirname "$0")"
PY=../.venv/bin/python
$PY compare.py --grid grids/remeasure.json --out ../results/remeasure --sources alpaca_mmlu
$PY compare.py --grid grids/remeasure.json --out ../results/remeasure
