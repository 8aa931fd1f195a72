#!/usr/bin/env bash
# Concurrent boots: tests/chaos/boots.sh [ROUNDS] [NODES] [BINARY]
#
# ROUNDS times (default 200), NODES release-binary nodes (default 3) on 127.0.0.1: node 1
# initializes and makes the cluster CA; once it answers, a join token is made for each other
# node, and those all start at the same instant with --join and --token, in odd rounds all
# through node 1, in even rounds each through the node before it. A round has formed when
# `cluster status` shows every node as a leader or follower (a live voter) within 10 s of the
# joiners' start. Prints one line per round that did not form (with its logs kept under $KEEP_DIR) and a
# summary: rounds formed, and the median and slowest time to form.
set -uo pipefail
cd "$(dirname "$0")/../.."
ROUNDS="${1:-200}" NODES="${2:-3}" BIN="${3:-target/release/metakv}"
KEEP_DIR="${KEEP_DIR:-$PWD/boots-failed}"
[ -x "$BIN" ] || { echo "no $BIN: cargo build --release first" >&2; exit 2; }

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

formed=0 times=()
for round in $(seq 1 "$ROUNDS"); do
  dir=$(mktemp -d)
  ports=() pids=()
  for i in $(seq 1 "$NODES"); do ports+=("$(free_port)"); done
  "$BIN" serve --id 1 --data-dir "$dir/node1" --listen "127.0.0.1:${ports[0]}" \
    >"$dir/node1.out" 2>"$dir/node1.log" &
  pids+=($!)
  export METAKV_CREDS="$dir/node1/admin.creds"
  tokens=()
  for i in $(seq 2 "$NODES"); do
    for _ in $(seq 1 100); do
      token=$("$BIN" --endpoint "127.0.0.1:${ports[0]}" cluster join-token 2>/dev/null) && break
      sleep 0.05
    done
    tokens+=("$token")
  done
  start=$(date +%s%N)
  for i in $(seq 2 "$NODES"); do
    if [ $((round % 2)) -eq 1 ]; then seed=${ports[0]}; else seed=${ports[$((i - 2))]}; fi
    "$BIN" serve --id "$i" --data-dir "$dir/node$i" --listen "127.0.0.1:${ports[$((i - 1))]}" \
      --join "127.0.0.1:$seed" --token "${tokens[$((i - 2))]}" \
      >"$dir/node$i.out" 2>"$dir/node$i.log" &
    pids+=($!)
  done
  ok=0
  while [ $(( ($(date +%s%N) - start) / 1000000 )) -lt 10000 ]; do
    status=$("$BIN" --json --endpoint "127.0.0.1:${ports[0]}" cluster status 2>/dev/null)
    if echo "$status" | python3 -c '
import json, sys
s = json.load(sys.stdin)
roles = sorted(n["role"] for n in s["nodes"])
n = int(sys.argv[1])
sys.exit(0 if len(roles) == n and roles.count("leader") == 1 and roles.count("follower") == n - 1 else 1)
' "$NODES" 2>/dev/null; then
      ok=1
      break
    fi
    sleep 0.05
  done
  ms=$(( ($(date +%s%N) - start) / 1000000 ))
  kill -9 "${pids[@]}" 2>/dev/null
  wait "${pids[@]}" 2>/dev/null
  if [ "$ok" -eq 1 ]; then
    formed=$((formed + 1))
    times+=("$ms")
    rm -rf "$dir"
  else
    mkdir -p "$KEEP_DIR"
    mv "$dir" "$KEEP_DIR/round$round"
    echo "round $round: not formed after ${ms} ms; logs in $KEEP_DIR/round$round; last status: $status"
  fi
done
sorted=$(printf '%s\n' "${times[@]}" | sort -n)
median=$(echo "$sorted" | awk '{a[NR]=$1} END {print a[int((NR + 1) / 2)]}')
slowest=$(echo "$sorted" | tail -1)
echo "$NODES nodes started together: $formed of $ROUNDS rounds formed (all live voters, one leader); median ${median} ms, slowest ${slowest} ms"
[ "$formed" -eq "$ROUNDS" ]
