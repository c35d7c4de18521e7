#!/usr/bin/env bash
# The Couchbase scale figures: the store on the project's Couchbase test
# server with N paid orders, N retries and N dead letters (default 100,000;
# first argument), counting what it asks of the cluster: statements run and
# documents read or written by KV for a minute of metrics refreshes, the
# retries and the dead letters of one reason, a `retries status`, the
# backlog and a sweep with nothing due, and the sweep of N/10 due retries.
# Prints the
# "scale:" lines of TestCouchbaseScale (which `go test ./...` runs at 2,000
# and which asserts the same counts). The test server runs every statement
# over the whole collection: its times are no figure for a cluster.
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-100000}
out=$(ORDERMAIL_CB_SCALE=$n go test ./store/couchbase/ -run '^TestCouchbaseScale$' -count=1 -v -timeout 60m 2>&1) || {
	echo "$out"
	exit 1
}
echo "$out" | grep -o 'scale: .*'
