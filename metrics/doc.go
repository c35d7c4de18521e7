// Package metrics serves ordermail's Prometheus metrics and its health
// checks: what the watcher, the timer and the mailer counted and timed since
// start (through their hooks and counters, so that none of them imports
// Prometheus), and the backlog figures, which a goroutine reads from the
// store every few seconds so that a scrape or a probe never waits on it.
// /healthz is liveness (the feed reader, the workers and the timer make
// progress), /readyz readiness (the email service accepts the
// configuration, the store answers), with the instance's roles.
package metrics
