#!/usr/bin/env bash
# Fuzzes the decoding of every document that reaches the service from
# outside (orders, retry and dead-letter documents, allow_retrys), seeded
# with the hostile corpus in fixtures/hostile: FuzzDecode (no decoder
# panics or accepts what it should refuse), then FuzzDecodersAgree (the fast
# decoder and encoding/json read every document alike). FUZZTIME: each
# target's time, default 5m.
set -euo pipefail
cd "$(dirname "$0")/.."
for target in FuzzDecode FuzzDecodersAgree; do
	go test -run '^$' -fuzz "^$target\$" -fuzztime "${FUZZTIME:-5m}" ./order/
done
