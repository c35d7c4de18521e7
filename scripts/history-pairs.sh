#!/usr/bin/env bash
# History against none, in pairs: each round runs `ordermail bench` with
# 20,000 paid orders (1ms mock latency, 16 workers, with the send-only
# ceiling) on an empty store, and on a store holding HISTORY confirmed
# orders written before the service started, then the idle service for 5s
# (its CPU, `retries status`, a /metrics scrape). Which of the two comes
# first alternates from round to round, so that the machine's drift hits
# both alike. Prints each run and, for each pair, the history run's share
# of its ceiling over the empty run's, with the medians: the target is
# that history moves the figures by less than 10%. Single runs are not
# enough to say: one evening, two runs a quarter of an hour apart gave
# -13%, where pairs taken in turn gave +8% in the median.
#
#   scripts/history-pairs.sh [ROUNDS]     (4 rounds, HISTORY=1000000 by default)
#   SCATTER=1 scripts/history-pairs.sh    keys in no order (bench --scatter), both runs
# Needs python3.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-4}
history=${HISTORY:-1000000}
scatter=()
[[ -n ${SCATTER:-} ]] && scatter=(--scatter)
bin=$(mktemp -d)
out=$(mktemp)
trap 'rm -rf "$bin" "$out"' EXIT
go build -o "$bin/ordermail" ./cmd/ordermail
echo "# run ordersPerSecond ofCeiling serviceCPUPerOrderUs idleCPUPercent statusMs metricsMs confirmed duplicateRequests"
one() {
	local name=$1
	shift
	if ! "$bin/ordermail" bench --orders 20000 --mail-latency 1ms --workers 16 --ceiling --idle 5s --timeout 30m "${scatter[@]}" "$@" >"$bin/run.json" 2>"$bin/run.log"; then
		echo "$name: ordermail bench failed:" >&2
		tail -n 20 "$bin/run.log" >&2
		exit 1
	fi
	python3 -c 'import json,sys; r=json.load(sys.stdin); print(sys.argv[1], r["ordersPerSecond"], r["ofCeiling"], r["serviceCPUPerOrderUs"], r["idleCPUPercent"], r["statusMs"], r["metricsMs"], r["confirmed"], r["duplicateRequests"])' "$name" <"$bin/run.json" |
		tee -a "$out"
}
for i in $(seq "$rounds"); do
	if ((i % 2)); then
		one empty
		one history --history "$history"
	else
		one history --history "$history"
		one empty
	fi
done
python3 - "$out" <<'PY'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1]) if l.strip()]
def col(name, i):
    return [float(r[i]) for r in rows if r[0] == name]
empty, hist = col("empty", 2), col("history", 2)
ratios = [h / e for e, h in zip(empty, hist)]
print(f"empty store: {statistics.median(col('empty', 1)):.0f}/s, {statistics.median(empty):.1%} of the ceiling (medians)")
print(f"with history: {statistics.median(col('history', 1)):.0f}/s, {statistics.median(hist):.1%} of the ceiling (medians); "
      f"idle {min(col('history', 4))}-{max(col('history', 4))}% of a core, status {min(col('history', 5))}-{max(col('history', 5))}ms, "
      f"scrape {min(col('history', 6))}-{max(col('history', 6))}ms")
print(f"history's share over the empty store's: {statistics.median(ratios):.1%} (median of {len(ratios)} pairs; each: {' '.join(f'{r:.0%}' for r in ratios)})")
PY
