#!/usr/bin/env bash
# Runs every fuzz target for SECONDS each (default 60) and fails on the first crash.
#   fuzz/run.sh [SECONDS] [TARGET...]
# Needs the nightly toolchain; installs cargo-fuzz if it is missing. Each target starts from its
# checked-in seeds (fuzz/corpus/<target>/) and keeps what it finds in a scratch copy, so a run
# never rewrites the seeds. A crash leaves its input under fuzz/artifacts/<target>/.
set -euo pipefail
cd "$(dirname "$0")"
SECONDS_EACH=${1:-60}
shift || true
TARGETS=("$@")
[ ${#TARGETS[@]} -gt 0 ] || TARGETS=(frame record archive store_model gc_engine command_apply hibernation)

if ! rustup toolchain list | grep -q '^nightly'; then
  echo "fuzz/run.sh: the nightly toolchain is not installed; nothing was fuzzed" >&2
  exit 2
fi
cargo +nightly fuzz --version >/dev/null 2>&1 || cargo install --locked cargo-fuzz
cargo +nightly fuzz build -O

# Targets that open stores make their files under TMPDIR; in memory they skip the disk's fsyncs.
if [ -z "${TMPDIR:-}" ] && [ -w /dev/shm ]; then export TMPDIR=/dev/shm; fi
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
status=0
for t in "${TARGETS[@]}"; do
  mkdir -p "$scratch/$t" "artifacts/$t"
  cp -r "corpus/$t/." "$scratch/$t/" 2>/dev/null || true
  echo "== $t: ${SECONDS_EACH}s"
  if ! cargo +nightly fuzz run -O "$t" "$scratch/$t" -- \
      -max_total_time="$SECONDS_EACH" -rss_limit_mb=4096 -print_final_stats=1 \
      2> >(tee "$scratch/$t.log" | grep -E '^(#[0-9]+ +DONE|stat::|==[0-9]+==|SUMMARY|Done)' >&2); then
    echo "== $t: FAILED (input under fuzz/artifacts/$t/)" >&2
    tail -40 "$scratch/$t.log" >&2
    status=1
  fi
done
exit $status
