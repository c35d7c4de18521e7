#!/usr/bin/env bash
# Loads deploy/prometheus/ordermail-alerts.yml as Prometheus does, with its
# own parser (deploy/prometheus/check, a module of its own: ordermail does
# not depend on Prometheus), and fails on any expression or template it
# would refuse. Run it after editing the rules; `go test ./metrics/` checks
# the metric names they use. Needs the Go module proxy the first time.
set -euo pipefail
cd "$(dirname "$0")/../deploy/prometheus/check"
go run . ../ordermail-alerts.yml
