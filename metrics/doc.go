// Package metrics serves ordermail's Prometheus metrics: what the watcher,
// the timer and the mailer counted since start, and the backlog read from
// the store at each scrape. The components keep their own counters; this
// package only reads them, so none of them imports Prometheus.
package metrics
