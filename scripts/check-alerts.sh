#!/usr/bin/env bash
# Loads deploy/prometheus/ordermail-alerts.yml as Prometheus does, with its
# own parser, and evaluates the alerts with its query engine on series of
# one and of several instances (deploy/prometheus/check, a module of its
# own: ordermail does not depend on Prometheus); fails on any expression or
# template it would refuse and on an alert that fires, or stays quiet,
# where it should not. CI runs it; `go test ./metrics/` checks the metric
# names the rules use. Needs the Go module proxy the first time.
set -euo pipefail
cd "$(dirname "$0")/../deploy/prometheus/check"
go vet ./...
go run . ../ordermail-alerts.yml
go test -count=1 ./...
