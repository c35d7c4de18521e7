#!/usr/bin/env bash
# The long crash test: `ordermail run` under `ordermail mockmail` (30% 503s,
# 5ms latency), orders arriving throughout, SIGKILL at random moments, many
# times. It ends with every paid order confirmed, no retry document left and
# no duplicate delivery, and prints the counts. The short version runs in
# `go test ./...`.
#   ORDERMAIL_CRASH_ORDERS (3000), ORDERMAIL_CRASH_KILLS (50), ORDERMAIL_CRASH_SEED (random)
set -euo pipefail
cd "$(dirname "$0")/.."
export ORDERMAIL_CRASH_ORDERS=${ORDERMAIL_CRASH_ORDERS:-3000}
export ORDERMAIL_CRASH_KILLS=${ORDERMAIL_CRASH_KILLS:-50}
go test -count=1 -timeout 60m -run '^TestCrashKillRestart$' -v ./cmd/ordermail/ |
  grep -E 'crash test|^(--- |ok|FAIL)|Error|expected|actual'
