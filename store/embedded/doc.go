// Package embedded is the store on one SQLite file (modernc.org/sqlite, pure
// Go), in WAL mode. Every write takes the next number of a durable sequence,
// which is both the document's CAS and its position on the change feed, so
// the feed is a scan of documents by sequence (deletions stay as tombstones),
// much like DCP's deduplicated stream. Writes by other processes on the same
// file reach a running feed at the next poll.
package embedded
