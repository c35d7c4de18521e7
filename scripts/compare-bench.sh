#!/usr/bin/env bash
# Paired benchmark of two ordermail binaries on this machine: ROUNDS rounds,
# each running the latency-bound scenario (1ms mock, 16 workers, --ceiling)
# with OLD, with NEW, and with NEW --secure (a bearer token and Standard
# Webhooks signatures the mock checks), in turn and in a rotating order so
# that the machine's drift hits all three alike; prints each run and the
# medians.
#
#   git worktree add /tmp/old <commit> && (cd /tmp/old && go build -o /tmp/om-old ./cmd/ordermail)
#   go build -o /tmp/om-new ./cmd/ordermail
#   scripts/compare-bench.sh /tmp/om-old /tmp/om-new 6
set -euo pipefail
old=${1:?old binary}
new=${2:?new binary}
rounds=${3:-6}
orders=${ORDERS:-30000}
out=$(mktemp)
trap 'rm -f "$out"' EXIT
one() {
  local name=$1 bin=$2; shift 2
  "$bin" bench --orders "$orders" --mail-latency 1ms --workers 16 --ceiling "$@" 2>/dev/null |
    python3 -c 'import json,sys; r=json.load(sys.stdin); print(sys.argv[1], r["ordersPerSecond"], r["ceilingPerSecond"], r["ofCeiling"])' "$name" |
    tee -a "$out"
}
# Each round starts one later in the rotation: the machine's speed drifts
# within a series, and the run taken first in a round was ahead more often
# than not.
for i in $(seq 0 $((rounds - 1))); do
  for j in 0 1 2; do
    case $(((i + j) % 3)) in
    0) one old "$old" ;;
    1) one new "$new" ;;
    2) one new-secure "$new" --secure ;;
    esac
  done
done
python3 - "$out" <<'PY'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1]) if l.strip()]
for name in ("old", "new", "new-secure"):
    r = [(float(a), float(b), float(c)) for n, a, b, c in rows if n == name]
    if r:
        print(f"{name}: median {statistics.median(x[0] for x in r):.0f} orders/s "
              f"(range {min(x[0] for x in r):.0f}-{max(x[0] for x in r):.0f}), "
              f"median {statistics.median(x[2] for x in r):.0%} of the ceiling, {len(r)} runs")
PY
