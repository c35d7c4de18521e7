// Package watcher is the port of the sample's two Eventing functions. It reads
// the change feed over inbound and retry and, for each change, loads the
// current state of its key (the order, its retry document, its dead letter:
// store.State), decides on it (Decide: a Plan), sends if the plan says so,
// settles the result (Settle: an Outcome) and writes the outcome with one
// store.Apply. Decide and Settle are pure; the rest only loads, sends and
// applies. An event is acknowledged only after its outcome is written.
// Events run on a bounded pool of workers that take them from one queue in
// feed order; an event whose key has one being handled waits for it in that
// key's line (see dispatcher), so that one order is never handled twice at
// once and a send that hangs holds up its own order only.
//
// # Outcomes and their crash windows
//
// Every write of an outcome is guarded by the CAS its decision read (no
// unconditional write or delete); a guard that fails means the state moved,
// and the watcher reads it again and decides, or settles, again. On the
// embedded store an outcome is one transaction, so there is no window. On
// Couchbase the writes are made one by one in the order below, and a crash
// after any prefix of them is safe:
//
//   - Sent: mark the order confirmed, remove the retry document, remove the
//     dead letter. The mark comes first because it is what keeps the order
//     from a second send. After it, a left-over retry document or dead
//     letter is removed when its order's change (the mark itself) is
//     decided: a confirmed order cleans up after itself (cleanUp).
//   - Retry: one write (insert or replace the retry document).
//   - Dead letter: write the dead letter, then remove the retry document.
//     After a crash between the two both exist; when the retry document is
//     flagged again (its claim runs out), it finds a dead letter whose
//     redrive count is not below its own, so the dead letter is newer, and
//     the retry is removed unsent.
//   - Redrive (ops.Redrive): write the retry document with the redrive count
//     raised, then remove the dead letter. After a crash between the two the
//     retry counts one redrive more than the dead letter, so it is sent, and
//     the sent outcome removes the dead letter.
//   - Claim of a flagged retry (before its send): one write.
//
// A crash between the send and the outcome repeats the send; it carries the
// same idempotency key (the order's key and incarnation, or the one its retry
// document keeps), so the email service answers it as a replay.
// TestCrashWindowsOfASentRetry and TestCrashWindowOfADeadLettering apply
// outcomes one write at a time, as Couchbase does, and die between them.
package watcher
