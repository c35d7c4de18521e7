package embedded

import (
	"database/sql"
	"time"
)

// A checkpoint that copied checkpointPages pages or more is followed by
// the next within checkpointSoon; one that copied fewer, within
// checkpointLater, so that pages written again and again (the counts, the
// end of the feed's index) are copied once for many commits, as SQLite's
// own checkpoints every 1,000 pages do.
const (
	checkpointPages = 1000
	checkpointSoon  = 100 * time.Millisecond
	checkpointLater = time.Second
)

// writerCheckpointPages is the writer connection's wal_autocheckpoint: past
// that many pages in the write-ahead log (40MB), a commit checkpoints
// itself, should checkpointLoop fall behind. SQLite's default is 1,000.
const writerCheckpointPages = 10_000

// checkpointLoop copies the write-ahead log into the database file, on a
// connection of its own, after commits. The writer's commits would
// otherwise stop for it every 1,000 pages, copying them and waiting for the
// file to sync: 14% of the service's CPU draining a million due retries,
// all of it on the writer, which every outcome waits for. PASSIVE: it
// holds up no writer and no reader; what it cannot copy yet waits for the
// next. A commit after a checkpoint that copied everything starts the log
// again from its beginning, so it stays short.
func (s *Store) checkpointLoop(db *sql.DB) {
	defer close(s.ckptDone)
	t := time.NewTimer(0)
	defer t.Stop()
	for {
		select {
		case <-s.stop:
			return
		case <-s.ckptKick:
		}
		var busy, frames, copied int
		// An error (the file lost, another process's checkpoint running)
		// leaves the pages for the next one, or for the writer's backstop.
		_ = db.QueryRow(`PRAGMA wal_checkpoint(PASSIVE)`).Scan(&busy, &frames, &copied)
		if copied >= checkpointPages {
			t.Reset(checkpointSoon)
		} else {
			t.Reset(checkpointLater)
		}
		select {
		case <-s.stop:
			return
		case <-t.C:
		}
	}
}

// kickCheckpoint asks checkpointLoop for a checkpoint, without waiting.
func (s *Store) kickCheckpoint() {
	select {
	case s.ckptKick <- struct{}{}:
	default:
	}
}
