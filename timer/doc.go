// Package timer is the sample's recurring Eventing timer: it ticks every
// interval, on the monotonic clock, and each tick runs Sweep, which flags the retry documents
// that are due (nextAttemptAt has come or, for the sample's documents, the
// last attempt is older than the quantum) so that the change feed brings
// them back to the watcher. allow_retrys may carry interval and quantum. The timer is armed while the control document
// allow_retrys exists in retry: each tick reads it, so creating it starts
// retries, deleting it stops them, and a restart finds the state in the store.
package timer
