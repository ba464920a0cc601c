#!/usr/bin/env bash
# The node's concurrency sweep (bench/sweep.py at 16, 64, 256, 1024 and 4096 concurrent
# signed record writes) in bench/run.sh's way: a fresh node per round, results in
# bench/results/<timestamp>/, bench/report.py's table at the end. The same environment as
# run.sh (PYTHON, R, IDLE_S, PROFILE_ROOT), plus SWEEP_CONC and SWEEP_N; R defaults to 1.
set -euo pipefail
R="${R:-1}" MODE=sweep exec bash "$(dirname "$0")/run.sh" "$@"
