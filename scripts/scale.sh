#!/usr/bin/env bash
# The scale figures: the service on a store that has seen a lot, each one
# `ordermail bench` run (service and mock as processes on loopback). Prints
# each JSON line after a "# scenario" line; progress goes to stderr.
#   1  1,000,000 confirmed orders of history: throughput beside the ceiling,
#      then the idle service (CPU, `retries status`, a /metrics scrape)
#   2  1,000,000 pending retry documents (due in a day): the same, and RSS
#   3  100,000 due retries, waiting paused, started when the run starts,
#      with 20,000 orders written at the same time
#   4  100,000 dead letters, redriven when the run starts (`deadletters
#      redrive --all`, timed, its peak RSS) while the service sends them
#   5  1,000,000 due retries (fallen due over the last hour) waiting paused:
#      the idle service, `retries status` and a /metrics scrape while they
#      wait, then the drain once the run starts retries
#   6  1 and 3 again with keys in no order (--scatter), as random
#      identifiers give them
# The matching tests in `go test ./...` pin the query plans and count the
# work at 50,000 documents (store/embedded/scale_test.go).
set -euo pipefail
cd "$(dirname "$0")/.."
bin=$(mktemp -d)
trap 'rm -rf "$bin"' EXIT
go build -o "$bin/ordermail" ./cmd/ordermail
# A scenario that fails (or prints a partial run, exit 1) is said and the
# next one run; Ctrl-C stops them all; the exit status is 1 when one failed.
trap 'exit 130' INT TERM
status=0
run() {
	echo "# ordermail bench $*"
	"$bin/ordermail" bench "$@" || {
		rc=$?
		[[ $rc == 130 ]] && exit 130
		echo "# failed: ordermail bench $*" >&2
		status=1
	}
}
run --orders 20000 --history 1000000 --ceiling --idle 10s --timeout 30m
run --orders 20000 --pending 1000000 --ceiling --idle 10s --timeout 30m
run --orders 20000 --due 100000 --ceiling --timeout 30m
run --orders 100 --dead 100000 --timeout 30m
run --orders 100 --due 1000000 --idle 10s --timeout 60m
run --orders 20000 --history 1000000 --scatter --ceiling --idle 10s --timeout 30m
run --orders 20000 --due 100000 --scatter --ceiling --timeout 30m
exit $status
