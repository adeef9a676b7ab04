#!/usr/bin/env bash
# The remeasure grid in the background, resumable (experiments/run_grid.sh on its grid file).
#   nohup nice -n 19 experiments/run_remeasure.sh >> results/remeasure/sitting.log 2>&1 &
exec "$(dirname "$0")/run_grid.sh" experiments/grids/remeasure.json results/remeasure
