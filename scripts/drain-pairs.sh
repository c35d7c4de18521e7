#!/usr/bin/env bash
# Due retries against first sends, in pairs: each round runs `ordermail bench`
# with N new paid orders (first sends), and with N retries already due
# while retries are paused, started when the run starts (`retries start`),
# and 100 orders beside them. Both at 1ms mock latency and 16 workers; the
# runs alternate, and so does which of them comes first in a round, so that
# the machine's drift hits both alike. Prints each run and, for each pair, the drain's rate over the first sends' rate, two
# ways: from `retries start` (the wait for the sweep's first tick included:
# up to --timer-interval, 1s) and from the first due retry delivered (the
# drain alone; the first sends' clock starts at their first write), and the
# drain against the first sends after their last write (afterWritesPerSecond:
# no order written beside them, as none is beside the drain; the strictest
# of the three), with the medians.
#
#   scripts/drain-pairs.sh [ROUNDS]     (6 rounds, ORDERS=100000 by default)
#   SCATTER=1 scripts/drain-pairs.sh    keys in no order (bench --scatter), both runs
# Needs python3.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-6}
orders=${ORDERS:-100000}
scatter=()
[[ -n ${SCATTER:-} ]] && scatter=(--scatter)
bin=$(mktemp -d)
out=$(mktemp)
trap 'rm -rf "$bin" "$out"' EXIT
go build -o "$bin/ordermail" ./cmd/ordermail
echo "# run ordersPerSecond duePerSecond dueDrainPerSecond dueFirstSeconds serviceCPUPerOrderUs confirmed duplicateRequests afterWritesPerSecond"
one() {
	local name=$1
	shift
	if ! "$bin/ordermail" bench --mail-latency 1ms --workers 16 --timeout 30m "${scatter[@]}" "$@" >"$bin/run.json" 2>"$bin/run.log"; then
		echo "$name: ordermail bench failed:" >&2
		tail -n 20 "$bin/run.log" >&2
		exit 1
	fi
	python3 -c 'import json,sys; r=json.load(sys.stdin); print(sys.argv[1], r["ordersPerSecond"], r.get("duePerSecond", "-"), r.get("dueDrainPerSecond", "-"), r.get("dueFirstSeconds", "-"), r["serviceCPUPerOrderUs"], r["confirmed"], r["duplicateRequests"], r.get("afterWritesPerSecond", "-"))' "$name" <"$bin/run.json" |
		tee -a "$out"
}
for i in $(seq "$rounds"); do
	# Which runs first alternates: the machine's speed drifts within a
	# series, and the run taken first in a pair was ahead more often than not.
	if ((i % 2)); then
		one first --orders "$orders"
		one due --orders 100 --due "$orders"
	else
		one due --orders 100 --due "$orders"
		one first --orders "$orders"
	fi
done
python3 - "$out" <<'PY'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1]) if l.strip()]
first = [float(r[1]) for r in rows if r[0] == "first"]
start = [float(r[2]) for r in rows if r[0] == "due"]
drain = [float(r[3]) for r in rows if r[0] == "due"]
# afterWritesPerSecond is "-" when a run printed none (its last write and
# delivery together): that comparison is then left out.
after = [float(r[8]) for r in rows if r[0] == "first" and r[8] != "-"]
whole = len(after) == len(first)
print(f"first sends {min(first):.0f}-{max(first):.0f}/s" +
      (f" (after their last write {min(after):.0f}-{max(after):.0f}/s)" if whole else " (a run gave no rate after its last write)"))
pairs = [("from retries start", start, first), ("from the first due delivery", drain, first)]
if whole:
    pairs.append(("from the first due delivery, against the first sends after their last write", drain, after))
for name, due, ref in pairs:
    ratios = [d / f for f, d in zip(ref, due)]
    print(f"due retries {name}: {min(due):.0f}-{max(due):.0f}/s, {statistics.median(ratios):.1%} of the first sends' rate "
          f"(median of {len(ratios)} pairs; each: {' '.join(f'{r:.0%}' for r in ratios)})")
PY
