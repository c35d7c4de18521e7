#!/usr/bin/env bash
# The benchmark scenarios of the throughput issue, each one `ordermail bench`
# run (the service and the mock email service as processes on loopback, a
# fresh embedded store in a temporary directory). Each prints its JSON line
# on stdout, after a "# scenario" line; progress goes to stderr.
#   scripts/bench.sh            all scenarios, a to i
#   scripts/bench.sh a b        some of them
#   a  latency-bound: 1ms per send, 16 workers, with the send-only ceiling
#      and the minimal pipeline
#   b  CPU-bound: no send latency, 64 workers, with both
#   c  20% transient failures, a fixed 1s retry, a tick every 100ms
#   d  open loop: 2000 orders a second for 30s
#   e  1,000,000 confirmed orders in the store beforehand
#   f  100,000 due retries, waiting paused, then started (`retries start`)
#   g  100,000 first sends, the speed f's drain is measured against
#   h  as c, but the mock fails first sends only (--fail-once): 20% of the
#      orders fail once
#   i  as c without failures: the first pass h is measured against
# Every run is bounded by its --timeout; the whole script by their sum.
set -euo pipefail
cd "$(dirname "$0")/.."

bin=$(mktemp -d)
trap 'rm -rf "$bin"' EXIT
go build -o "$bin/ordermail" ./cmd/ordermail

scenario() {
	case $1 in
	a) echo --orders 20000 --mail-latency 1ms --workers 16 --ceiling --minimal --timeout 10m ;;
	b) echo --orders 20000 --mail-latency 0 --workers 64 --ceiling --minimal --timeout 10m ;;
	c) echo --orders 20000 --fail-rate 0.2 --backoff fixed --retry-quantum 1s --timer-interval 100ms --timeout 10m ;;
	d) echo --orders 60000 --rate 2000 --timeout 10m ;;
	e) echo --orders 20000 --history 1000000 --timeout 30m ;;
	f) echo --orders 100 --due 100000 --timeout 20m ;;
	g) echo --orders 100000 --timeout 20m ;;
	h) echo --orders 20000 --fail-rate 0.2 --fail-once --backoff fixed --retry-quantum 1s --timer-interval 100ms --timeout 10m ;;
	i) echo --orders 20000 --backoff fixed --retry-quantum 1s --timer-interval 100ms --timeout 10m ;;
	*) echo "unknown scenario $1 (a to i)" >&2; return 1 ;;
	esac
}

# Ctrl-C stops the whole run, not the scenario under way alone: ordermail
# bench ends on it with status 130, which the loop below would take for a
# failed scenario and go on.
trap 'exit 130' INT TERM
status=0
for s in "${@:-a b c d e f g h i}"; do
	for name in $s; do
		args=$(scenario "$name")
		echo "# $name: ordermail bench $args"
		# shellcheck disable=SC2086 # the arguments are words
		"$bin/ordermail" bench $args || {
			rc=$?
			[[ $rc == 130 ]] && exit 130
			echo "# $name failed" >&2
			status=1
		}
	done
done
exit $status
