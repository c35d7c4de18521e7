// Package embedded is the store on one SQLite file (modernc.org/sqlite, pure
// Go), in WAL mode. Every write takes the next number of a durable sequence,
// which is both the document's CAS and its position on the change feed, so
// the feed is a scan of documents by sequence, much like DCP's deduplicated
// stream. A deletion stays as a tombstone while a saved subscription wants
// deletions; the watcher's does not (FeedOptions.SkipSettled), so its
// removals delete rows. Writes by other processes on the same
// file reach a running feed at the next poll.
package embedded
