#!/usr/bin/env bash
# An email-provider outage and its end, with the processes a user runs: the
# mock answers 503 to every send, ordermail (embedded store, 16 workers)
# gets N paid orders, its circuit breaker opens and every order waits as a
# retry; over WINDOW seconds of the outage, a cooldown after that, it
# prints the service's CPU and the sends it held back a second (each a
# retry written again for nothing); then the
# mock answers 200 again, and it prints how long after that the breaker
# closed and the last order was confirmed, and the mock's count of
# duplicate requests.
#
#   scripts/outage.sh [N]     (N=20000; COOLDOWN=30s WINDOW=30 by default)
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-20000}
cooldown=${COOLDOWN:-30s}
# The cooldown is a Go duration for ordermail, seconds for sleep.
cooldown_s=$(python3 - "$cooldown" <<'EOF'
import re, sys
v, units = sys.argv[1], {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
parts = re.findall(r"([0-9.]+)(ms|s|m|h)", v)
if not parts or "".join(a + b for a, b in parts) != v:
    sys.exit("outage: COOLDOWN=%s is not a duration such as 30s, 500ms or 1m30s" % v)
print(sum(float(a) * units[b] for a, b in parts))
EOF
) || exit 2
window=${WINDOW:-30}
dir=$(mktemp -d)
pids=()
cleanup() {
	for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
	wait 2>/dev/null || true
	rm -rf "$dir"
}
trap cleanup EXIT
go build -o "$dir/ordermail" ./cmd/ordermail
om=$dir/ordermail
store=file:$dir/o.db
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
mailport=$(port)
metricsport=$(port)
metric() { curl -sf "http://127.0.0.1:$metricsport/metrics" | awk -v m="$1" '$1 == m { print $2 }'; }
status() { "$om" retries status --store "$store" --json | python3 -c 'import json,sys; d=json.load(sys.stdin); print(d[sys.argv[1]])' "$1"; }
cpu() { awk '{ print $14 + $15 }' "/proc/$1/stat"; } # clock ticks
ticks=$(getconf CLK_TCK)
waitfor() { # description, a condition evaluated anew each time; gives up after 10 minutes
	local what=$1 end=$((SECONDS + 600))
	while ((SECONDS < end)); do
		if eval "$2"; then return 0; fi
		sleep 0.1
	done
	echo "outage: gave up waiting for $what" >&2
	exit 1
}

"$om" mockmail --listen "127.0.0.1:$mailport" --fail-rate 1 --log-level warn &
pids+=($!)
mock=$!
"$om" run --store "$store" --mail-url "http://127.0.0.1:$mailport" --workers 16 --breaker-cooldown "$cooldown" \
	--metrics-listen "127.0.0.1:$metricsport" --log-level warn &
pids+=($!)
service=$!
waitfor "the service's metrics" 'metric ordermail_breaker_open >/dev/null'
"$om" retries start --store "$store" >/dev/null
python3 -c '
import json, sys
for i in range(int(sys.argv[1])):
    print(json.dumps({"id": "order_%07d" % i, "doc": {"email": "c%d@example.com" % i, "paymentStatus": "paid",
        "confirmationEmailSent": False, "items": [{"name": "Tea", "amount": 1, "unitPrice": 3.5}]}}))
' "$n" >"$dir/orders.jsonl"
"$om" load --store "$store" --collection inbound "$dir/orders.jsonl" >/dev/null
waitfor "every order to wait as a retry" '[[ $(status retryDocs) == "$n" ]]'
waitfor "the breaker to open" '[[ $(metric ordermail_breaker_open) == 1 ]]'

# The sends held back while the orders were written come back a cooldown
# later: the window starts after it.
sleep "$cooldown_s"
held0=$(metric 'ordermail_sends_held_total{why="breaker"}')
cpu0=$(cpu "$service")
sleep "$window"
cpu1=$(cpu "$service")
held1=$(metric 'ordermail_sends_held_total{why="breaker"}')

kill "$mock"
wait "$mock" 2>/dev/null || true
"$om" mockmail --listen "127.0.0.1:$mailport" --fail-rate 0 --log-level warn &
pids+=($!)
mock=$!
back=$(date +%s.%N)
waitfor "the breaker to close" '[[ $(metric ordermail_breaker_open) == 0 ]]'
closed=$(date +%s.%N)
waitfor "every order confirmed" '[[ $(status ordersConfirmed) == "$n" ]]'
done=$(date +%s.%N)
stats=$(curl -sf "http://127.0.0.1:$mailport/stats")

python3 - "$n" "$window" "$ticks" "$cpu0" "$cpu1" "$held0" "$held1" "$back" "$closed" "$done" "$cooldown" "$stats" <<'EOF'
import json, sys
n, window, ticks = int(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3])
cpu0, cpu1, held0, held1 = (float(x) for x in sys.argv[4:8])
back, closed, done = (float(x) for x in sys.argv[8:11])
stats = json.loads(sys.argv[12])
print(json.dumps({
    "orders": n, "cooldown": sys.argv[11], "outageWindowSeconds": window,
    "outageCPUPercent": round((cpu1 - cpu0) / ticks / window * 100, 2),
    "outageHeldPerSecond": round((held1 - held0) / window, 1),
    "breakerClosedSeconds": round(closed - back, 2),
    "allConfirmedSeconds": round(done - back, 2),
    "drainSeconds": round(done - closed, 2),
    "deliveries": stats["deliveries"], "duplicateRequests": stats["duplicateRequests"],
}))
EOF
