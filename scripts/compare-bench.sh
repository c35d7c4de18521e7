#!/usr/bin/env bash
# Paired benchmark of two ordermail binaries on this machine: ROUNDS rounds,
# each running the latency-bound scenario (1ms mock, 16 workers, --ceiling)
# with OLD, with NEW, and with NEW --secure (a bearer token and Standard
# Webhooks signatures the mock checks), in turn and in a rotating order so
# that the machine's drift hits all three alike; prints each run, the
# medians, and NEW's share of the ceiling against OLD's round by round (how
# many rounds it was ahead, by how much on average): the machine's speed
# moves within a series more than most changes do, so a difference of
# medians alone decides little.
#
#   git worktree add /tmp/old <commit> && (cd /tmp/old && go build -o /tmp/om-old ./cmd/ordermail)
#   go build -o /tmp/om-new ./cmd/ordermail
#   scripts/compare-bench.sh /tmp/om-old /tmp/om-new 6
#
# ROUNDS (the third argument) defaults to 6, ORDERS (the environment) to
# 30000; README's scenario a is ORDERS=20000. NEW_RUN_ARGS (the
# environment) are handed to NEW's service (after bench's --), to measure a
# setting against the same binary without it:
#
#   NEW_RUN_ARGS='--attempt-history 0' scripts/compare-bench.sh /tmp/om /tmp/om 6
#
# Needs python3.
set -euo pipefail
old=${1:?old binary}
new=${2:?new binary}
rounds=${3:-6}
orders=${ORDERS:-30000}
new_run=()
if [[ -n ${NEW_RUN_ARGS:-} ]]; then
  read -ra extra <<<"$NEW_RUN_ARGS"
  new_run=(-- "${extra[@]}")
fi
out=$(mktemp)
json=$(mktemp)
log=$(mktemp)
trap 'rm -f "$out" "$json" "$log"' EXIT
echo "# run ordersPerSecond ceilingPerSecond ofCeiling serviceCPUPerOrderUs"
one() {
  local name=$1 bin=$2; shift 2
  if ! "$bin" bench --orders "$orders" --mail-latency 1ms --workers 16 --ceiling "$@" >"$json" 2>"$log"; then
    echo "$name: ordermail bench failed:" >&2
    tail -n 20 "$log" >&2
    exit 1
  fi
  python3 -c 'import json,sys; r=json.load(sys.stdin); print(sys.argv[1], r["ordersPerSecond"], r["ceilingPerSecond"], r["ofCeiling"], r.get("serviceCPUPerOrderUs", 0))' "$name" <"$json" |
    tee -a "$out"
}
# Each round starts one later in the rotation: the machine's speed drifts
# within a series, and the run taken first in a round was ahead more often
# than not.
for i in $(seq 0 $((rounds - 1))); do
  echo "round $i" >>"$out"
  for j in 0 1 2; do
    case $(((i + j) % 3)) in
    0) one old "$old" ;;
    1) one new "$new" "${new_run[@]}" ;;
    2) one new-secure "$new" --secure "${new_run[@]}" ;;
    esac
  done
done
python3 - "$out" <<'PY'
import statistics, sys
rows, rounds = [], []
for line in open(sys.argv[1]):
    f = line.split()
    if f and f[0] == "round":
        rounds.append({})
    elif f:
        rows.append(f)
        rounds[-1][f[0]] = float(f[3])
for name in ("old", "new", "new-secure"):
    r = [(float(a), float(b), float(c), float(d)) for n, a, b, c, d in rows if n == name]
    if r:
        print(f"{name}: median {statistics.median(x[0] for x in r):.0f} orders/s "
              f"(range {min(x[0] for x in r):.0f}-{max(x[0] for x in r):.0f}), "
              f"median {statistics.median(x[2] for x in r):.1%} of the ceiling, "
              f"median {statistics.median(x[3] for x in r):.1f}us of CPU an order, {len(r)} runs")
for name in ("new", "new-secure"):
    d = [r[name] - r["old"] for r in rounds if name in r and "old" in r]
    if d:
        print(f"{name} against old, round by round: ahead in {sum(x > 0 for x in d)} of {len(d)}, "
              f"by {100 * statistics.mean(d):+.1f} points of the ceiling on average "
              f"(from {100 * min(d):+.1f} to {100 * max(d):+.1f})")
PY
