// Package ops is what operators do to a running ordermail through its store:
// start, stop and inspect retries, and list, redrive and purge dead letters.
// The CLI formats what it returns; the tests call it directly.
package ops
