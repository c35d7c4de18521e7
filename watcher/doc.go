// Package watcher is the port of the sample's two Eventing functions. It reads
// the change feed over inbound and retry, turns each event into a Change,
// decides what to do with it in one function (Decide), and carries the
// decision out: send the confirmation, then mark the order or write, update or
// delete its retry document. An event is acknowledged only after its outcome
// is written. Events run on a bounded pool of workers, sharded by key so that
// one order is never handled twice at once.
package watcher
