package embedded

import (
	"context"
	"database/sql"
	"fmt"
	"time"

	"github.com/ordermail/ordermail/order"
	"github.com/ordermail/ordermail/store"
)

// SweepRetries flags at most limit due retry documents, oldest due first,
// in one short transaction: two range scans of partial indexes that hold
// only unflagged retry documents, so its cost follows limit and not the
// number of retry documents.
func (s *Store) SweepRetries(ctx context.Context, now time.Time, quantum time.Duration, limit int) (store.SweepResult, error) {
	if limit <= 0 {
		return store.SweepResult{}, fmt.Errorf("sweep retries: limit %d is not positive", limit)
	}
	// Nothing due, most ticks: found on a read connection, with no write
	// transaction.
	var due int
	if err := s.read.QueryRowContext(ctx, `SELECT
		EXISTS (SELECT 1 FROM docs INDEXED BY retry_next WHERE next_at IS NOT NULL AND next_at <= ?) OR
		EXISTS (SELECT 1 FROM docs INDEXED BY retry_ts WHERE ts_at IS NOT NULL AND ts_at < ?)`,
		now.UnixMilli(), now.Add(-quantum).UnixMilli()).Scan(&due); err != nil {
		return store.SweepResult{}, fmt.Errorf("sweep retries: %w", mapErr(err))
	}
	if due == 0 {
		return store.SweepResult{}, nil
	}
	var res store.SweepResult
	err := s.submit(ctx, func(t *txn) error {
		// Each flag clears the one column its document is due by, and
		// keeps when it fell due: that column's time plus dueAfter (the
		// quantum for a ts, nothing for a nextAttemptAt). The due are found
		// by their row ids, which their index holds.
		flag := func(st *wstmt, d idValue, dueAfter time.Duration) error {
			res.Flagged++
			return st.Exec(t.ctx, flagged(d.value), t.next(), dueAfter.Milliseconds(), d.id)
		}
		res = store.SweepResult{} // a job run again starts afresh
		byNext, err := s.stmts.dueNext.IDValues(t.ctx, now.UnixMilli(), limit)
		if err != nil {
			return err
		}
		byTS, err := s.stmts.dueTS.IDValues(t.ctx, now.Add(-quantum).UnixMilli(), limit)
		if err != nil {
			return err
		}
		// The two kinds merged by when each fell due: a document by its
		// nextAttemptAt, the sample's by its ts plus the quantum.
		for len(byNext)+len(byTS) > 0 && res.Flagged < limit {
			if len(byTS) == 0 || len(byNext) > 0 && byNext[0].at <= byTS[0].at+quantum.Milliseconds() {
				err, byNext = flag(s.stmts.flagNext, byNext[0], 0), byNext[1:]
			} else {
				err, byTS = flag(s.stmts.flagTS, byTS[0], quantum), byTS[1:]
			}
			if err != nil {
				return err
			}
		}
		res.More = res.Flagged == limit
		return nil
	})
	if err != nil {
		return store.SweepResult{}, fmt.Errorf("sweep retries: %w", err)
	}
	return res, nil
}

// flagged is a due retry document's value with fireRetry set. One the
// watcher cannot read is flagged as it is: the feed brings it back, and
// the watcher dead-letters it, saying why.
func flagged(value string) string {
	v, err := order.SetFireRetry([]byte(value))
	if err != nil {
		return value
	}
	return string(v)
}

// backlogQuery counts the due retries: the minutes already past from
// due_minutes, kept by triggers, and the current minute's on the partial
// indexes. Its cost follows the minutes the backlog spans and the retries
// due within one minute, not the due retries (TestScaleDueCountReadsMinutes).
// The oldest due is the least of three index ends: the unflagged by
// nextAttemptAt, by ts, and the flagged by when they fell due (fire_at).
const backlogQuery = `SELECT
	(SELECT fire FROM stats),
	(SELECT coalesce(sum(n), 0) FROM due_minutes WHERE kind = 0 AND minute < ?1 / 60000) +
	(SELECT count(*) FROM docs INDEXED BY retry_next WHERE next_at IS NOT NULL AND next_at >= ?1 / 60000 * 60000 AND next_at <= ?1),
	(SELECT min(next_at) FROM docs INDEXED BY retry_next WHERE next_at IS NOT NULL),
	(SELECT coalesce(sum(n), 0) FROM due_minutes WHERE kind = 1 AND minute < ?2 / 60000) +
	(SELECT count(*) FROM docs INDEXED BY retry_ts WHERE ts_at IS NOT NULL AND ts_at >= ?2 / 60000 * 60000 AND ts_at < ?2),
	(SELECT min(ts_at) FROM docs INDEXED BY retry_ts WHERE ts_at IS NOT NULL),
	(SELECT min(fire_at) FROM docs INDEXED BY retry_fired WHERE fire_at IS NOT NULL)`

// Backlog counts the due retries (backlogQuery).
func (s *Store) Backlog(ctx context.Context, now time.Time, quantum time.Duration) (store.Backlog, error) {
	if err := s.check(); err != nil {
		return store.Backlog{}, err
	}
	var b store.Backlog
	var flagged, dueNext, dueTS int
	var oldestNext, oldestTS, oldestFired sql.NullInt64
	err := s.read.QueryRowContext(ctx, backlogQuery,
		now.UnixMilli(), now.Add(-quantum).UnixMilli()).Scan(&flagged, &dueNext, &oldestNext, &dueTS, &oldestTS, &oldestFired)
	if err != nil {
		return store.Backlog{}, fmt.Errorf("backlog: %w", mapErr(err))
	}
	b.Due = flagged + dueNext + dueTS
	oldest := func(due time.Time) {
		if due.After(now) { // flagged by hand before it fell due: due now
			due = now
		}
		if b.OldestDue.IsZero() || due.Before(b.OldestDue) {
			b.OldestDue = due
		}
	}
	if dueNext > 0 && oldestNext.Valid {
		oldest(time.UnixMilli(oldestNext.Int64))
	}
	if dueTS > 0 && oldestTS.Valid {
		oldest(time.UnixMilli(oldestTS.Int64).Add(quantum))
	}
	if flagged > 0 && oldestFired.Valid {
		oldest(time.UnixMilli(oldestFired.Int64))
	}
	return b, nil
}
