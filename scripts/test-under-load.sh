#!/usr/bin/env bash
# Runs the test suite the way CI does while a CPU hog keeps each core busy:
# the tests must wait for conditions, never for a wall-clock budget.
# Stopped (Ctrl-C, SIGTERM), it stops the suite and the hogs with it.
set -euo pipefail
cd "$(dirname "$0")/.."
hogs=()
for _ in $(seq "$(nproc)"); do
	timeout 1800 sh -c 'while :; do :; done' &
	hogs+=($!)
done
suite=
stop() {
	kill "${hogs[@]}" 2>/dev/null || true
	# The suite in a process group of its own (set -m below): its go test
	# processes go with it.
	[[ -n $suite ]] && kill -- "-$suite" 2>/dev/null || true
}
trap stop EXIT
trap 'exit 143' TERM
trap 'exit 130' INT
start=$(date +%s)
set -m
bash .ci/run &
suite=$!
set +m
wait "$suite"
suite=
echo "suite passed under load in $(( $(date +%s) - start )) s with $(nproc) busy cores"
