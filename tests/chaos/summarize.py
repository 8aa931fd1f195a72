#!/usr/bin/env python3
"""Sums up soak reports (the lines tests/chaos/run.sh appends): runs, operations, violations,
faults by kind, and per kind of fault the time until a new write went through and the
slowest write after it (median / max, ms).

    tests/chaos/summarize.py chaos-report.txt [more reports...]
"""
import re
import statistics
import sys
from collections import defaultdict


def main(paths):
    runs = ops = acked = unknown = violations = 0
    failed = []
    first = defaultdict(list)
    slowest = defaultdict(list)
    for path in paths:
        for line in open(path):
            fields = dict(re.findall(r"(\w+)=(\S+)", line.split(" faults=")[0]))
            if "seed" not in fields:
                continue
            runs += 1
            ops += int(fields["ops"])
            acked += int(fields["acked_writes"])
            unknown += int(fields["unknown"])
            v = int(fields["violations"])
            violations += v
            if v:
                failed.append(fields["seed"])
            m = re.search(r"unavailable_ms=(\S*)", line)
            for item in filter(None, (m.group(1) if m else "").split(",")):
                kind, a, b = item.rsplit(":", 2)
                # A fault with no write after it before the next fault has no first write
                # ("-"; older reports printed an overflowed number).
                if a != "-" and int(a) < 2**63:
                    first[kind].append(int(a))
                slowest[kind].append(int(b))
    print(f"{runs} runs: {ops:,} operations, {acked:,} acknowledged writes, "
          f"{unknown:,} of unknown outcome, {violations} violations {failed}")
    print(f"{sum(len(v) for v in slowest.values())} faults")
    print("| fault | count | until a new write: median / max ms | slowest write after it: median / max ms |")
    print("|---|---|---|---|")
    for kind in sorted(slowest):
        a, b = first[kind], slowest[kind]
        fa = f"{statistics.median(a):,.0f} / {max(a):,}" if a else "-"
        print(f"| {kind} | {len(b)} | {fa} | {statistics.median(b):,.0f} / {max(b):,} |")


if __name__ == "__main__":
    main(sys.argv[1:] or ["chaos-report.txt"])
