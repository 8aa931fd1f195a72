#!/usr/bin/env bash
# Soak runs of the fault-injection suite: tests/chaos/run.sh [SECONDS] [RUNS] [FIRST_SEED]
#
# RUNS runs of SECONDS each (default 60 s, 10 runs), seeds FIRST_SEED, FIRST_SEED+1, ...
# One summary line per run is appended to chaos-report.txt (CHAOS_REPORT overrides): its
# operations, faults by kind, violations, and per fault the ms until a new write went
# through and the slowest write after it. A run that finds a violation prints its seed, the
# operations and faults involved, and keeps its nodes' data dirs and logs; the same seed
# replays the same schedule:
#   CHAOS_SEEDS=<seed> CHAOS_SECONDS=<seconds> cargo test --test chaos short -- --nocapture
set -euo pipefail
cd "$(dirname "$0")/../.."
export CHAOS_SECONDS="${1:-60}" CHAOS_RUNS="${2:-10}" CHAOS_SEED="${3:-1}"
export CHAOS_REPORT="${CHAOS_REPORT:-$PWD/chaos-report.txt}"
cargo test --test chaos -- --ignored soak --nocapture
