// Package order is ordermail's domain: the order and retry documents of the
// Couchbase Eventing retry sample, their key and collection names, and the
// idempotency key that ties every attempt at one confirmation together.
// It imports nothing of ordermail's own.
package order
