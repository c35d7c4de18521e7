#!/usr/bin/env bash
# Due retries against first sends, in pairs: each round runs `ordermail bench`
# with N new paid orders (first sends), then with N retries already due
# while retries are paused, started when the run starts (`retries start`),
# and 100 orders beside them. Both at 1ms mock latency and 16 workers; the
# runs alternate so that the machine's drift hits both alike. Prints each
# run, the ratio of each pair (drain rate / first-send rate; the drain's
# clock starts at `retries start`, so it includes the wait for the first
# tick) and the median.
#
#   scripts/drain-pairs.sh [ROUNDS]     (ORDERS=100000 by default)
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-6}
orders=${ORDERS:-100000}
bin=$(mktemp -d)
out=$(mktemp)
trap 'rm -rf "$bin" "$out"' EXIT
go build -o "$bin/ordermail" ./cmd/ordermail
one() {
	local name=$1
	shift
	"$bin/ordermail" bench --mail-latency 1ms --workers 16 --timeout 30m "$@" 2>/dev/null |
		python3 -c 'import json,sys; r=json.load(sys.stdin); print(sys.argv[1], r["ordersPerSecond"], r["serviceCPUPerOrderUs"], r["confirmed"], r["duplicateRequests"])' "$name" |
		tee -a "$out"
}
for _ in $(seq "$rounds"); do
	one first --orders "$orders"
	one due --orders 100 --due "$orders"
done
python3 - "$out" <<'PY'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1]) if l.strip()]
first = [float(r[1]) for r in rows if r[0] == "first"]
due = [float(r[1]) for r in rows if r[0] == "due"]
ratios = [d / f for f, d in zip(first, due)]
print("pairs:", " ".join(f"{r:.0%}" for r in ratios))
print(f"due retries drained at {statistics.median(ratios):.1%} of the first sends' rate (median of {len(ratios)} pairs, "
      f"{min(ratios):.0%}-{max(ratios):.0%}); first sends {min(first):.0f}-{max(first):.0f}/s, drains {min(due):.0f}-{max(due):.0f}/s")
PY
