#!/usr/bin/env bash
# Fuzzes the decoding of every document that reaches the service from
# outside (orders, retry and dead-letter documents, allow_retrys), seeded
# with the hostile corpus in fixtures/hostile. FUZZTIME: default 5m.
set -euo pipefail
cd "$(dirname "$0")/.."
go test -run '^$' -fuzz '^FuzzDecode$' -fuzztime "${FUZZTIME:-5m}" ./order/
