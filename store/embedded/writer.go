package embedded

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/ordermail/ordermail/order"
	"github.com/ordermail/ordermail/store"
	"modernc.org/sqlite"
)

// Every write goes through one goroutine that owns the write connection.
// It takes the jobs waiting, up to MaxBatch, and runs them in one
// transaction, each in a savepoint of its own where it may fail half-way:
// one commit (one WAL sync point) for many outcomes, and a job whose guard
// fails rolls back alone. A commit costs far more than the writes in it, so
// while the watcher's workers' writes keep coming (store.WithSharedCommit;
// the last commit ended less than CommitDelay ago) the writer waits up to
// CommitDelay for a batch to fill. A write after a quiet spell, or one
// without that mark (a command writing one document after another, each
// waiting for the last), commits at once: waiting would only hold it.
//
// Its statements that write documents say OR FAIL (an insert that may find
// its key there, OR IGNORE), and so do the triggers' (docsTriggers,
// dueTriggers), and none calls a function: SQLite gives a
// statement that may stop half-way (a constraint that aborts, a trigger,
// a function) a statement journal, a copy of every page it is about to
// change, so that it can be undone alone. The writer never undoes a
// statement alone: an error of SQLite fails the whole transaction, which
// is rolled back, and each of its jobs then runs again alone (runBatch).
// Those copies were a tenth of the service's CPU while due retries
// drained.

type job struct {
	ctx context.Context
	fn  func(t *txn) error
	// partial says fn may fail after it has written: it then runs in a
	// savepoint of its own. Most jobs check everything before they write.
	partial bool
	// shared: the caller is one of many concurrent writers
	// (store.WithSharedCommit); only then may the writer wait for others.
	shared bool
	err    error
	done   chan struct{}
}

// txn is the transaction a job runs in.
type txn struct {
	s   *Store
	ctx context.Context
	seq uint64 // the last sequence number handed out
	// tombs says whether a removal leaves a tombstone: 0 not read yet in
	// this transaction, 1 yes, -1 no (see tombstones).
	tombs int8
}

type writeStmts struct {
	begin, commit, rollback, savepoint, release, rollbackTo *wstmt

	cur                     *wstmt
	putAdd, putSet          *wstmt
	flatAdd, flatSet        *wstmt
	seqGet, seqSet          *wstmt
	dueNext, dueTS          *wstmt
	flagNext, flagTS        *wstmt
	saveCheckpoint, minCkpt *wstmt
	postpone                *wstmt
	purge, expire           *wstmt
	attCur, attAdd, attPut  *wstmt
	attDel                  *wstmt
	replace, replaceFlat    *wstmt
	bury, erase             *wstmt
	register, wantDeletions *wstmt
}

func (s *Store) prepareWrites(ctx context.Context) error {
	return s.write.Raw(func(dc any) error {
		err := s.prepareWritesOn(ctx, dc)
		if err != nil {
			s.stmts.close() // those prepared before the failure
		}
		return err
	})
}

func (s *Store) prepareWritesOn(ctx context.Context, dc any) error {
	var err error
	p := func(q string) *wstmt {
		if err != nil {
			return nil
		}
		var st *wstmt
		st, err = prepareRaw(ctx, dc, q)
		return st
	}
	s.stmts = writeStmts{
		begin:         p(`BEGIN IMMEDIATE`),
		commit:        p(`COMMIT`),
		rollback:      p(`ROLLBACK`),
		savepoint:     p(`SAVEPOINT job`),
		release:       p(`RELEASE job`),
		rollbackTo:    p(`ROLLBACK TO job`),
		cur:           p(`SELECT seq, value IS NULL FROM docs WHERE coll = ? AND key = ?`),
		putAdd:        p(putAddQuery),
		putSet:        p(putSetQuery),
		flatAdd:       p(flatAddQuery),
		flatSet:       p(flatSetQuery),
		replace:       p(guardedReplaceQuery),
		replaceFlat:   p(flatReplaceQuery),
		bury:          p(buryQuery),
		erase:         p(eraseQuery),
		wantDeletions: p(`SELECT EXISTS (SELECT 1 FROM checkpoints WHERE deletions)`),
		// A subscription's row: its position (kept when it has one) and
		// whether it wants deletions.
		register: p(`INSERT INTO checkpoints (name, partition, seq, deletions) VALUES (?, 0, ?, ?)
			ON CONFLICT (name, partition) DO UPDATE SET deletions = excluded.deletions
			RETURNING seq`),
		seqGet: p(`SELECT value FROM counters WHERE name = 'seq'`),
		seqSet: p(`UPDATE counters SET value = ? WHERE name = 'seq'`),
		// Only retry documents have next_at or ts_at, and only unflagged
		// ones: each query is a range scan of its partial index, bounded
		// by LIMIT (TestQueryPlans pins the plans).
		dueNext:  p(dueNextQuery),
		dueTS:    p(dueTSQuery),
		flagNext: p(flagQuery("next_at")),
		flagTS:   p(flagQuery("ts_at")),
		saveCheckpoint: p(`INSERT INTO checkpoints (name, partition, seq) VALUES (?, 0, ?)
			ON CONFLICT (name, partition) DO UPDATE SET seq = excluded.seq`),
		minCkpt:  p(`SELECT min(seq) FROM checkpoints`),
		purge:    p(purgeQuery),
		expire:   p(expireQuery),
		postpone: p(postponeQuery),
		attCur:   p(`SELECT rev FROM attempts WHERE key = ?`),
		// The revision is the row's own, one more at each write: an
		// upsert, which has no guard, needs no read before it. It is an
		// insert, and an update when the key is there, not one statement
		// (ON CONFLICT DO UPDATE), which would take a statement journal.
		attAdd: p(attAddQuery),
		attPut: p(attPutQuery),
		attDel: p(`DELETE FROM attempts WHERE key = ?`),
	}
	return err
}

func (w writeStmts) close() error {
	var errs []error
	for _, st := range []*wstmt{w.begin, w.commit, w.rollback, w.savepoint, w.release, w.rollbackTo,
		w.cur, w.putAdd, w.putSet, w.flatAdd, w.flatSet, w.seqGet, w.seqSet, w.dueNext, w.dueTS, w.flagNext, w.flagTS, w.saveCheckpoint, w.minCkpt, w.purge, w.expire, w.postpone, w.attCur, w.attAdd, w.attPut, w.attDel, w.replace, w.replaceFlat, w.bury, w.erase, w.register, w.wantDeletions} {
		if st != nil {
			errs = append(errs, st.Close())
		}
	}
	return errors.Join(errs...)
}

// submit runs fn in a write transaction and waits for its commit. fn
// fails, other than by an error of SQLite's, only before it writes.
func (s *Store) submit(ctx context.Context, fn func(t *txn) error) error {
	return s.submitJob(ctx, &job{ctx: ctx, fn: fn, done: make(chan struct{})})
}

func (s *Store) submitJob(ctx context.Context, j *job) error {
	if s.readOnly {
		return fmt.Errorf("embedded store %s: opened %w: no write", s.cfg.Path, ErrReadOnly)
	}
	j.shared = store.SharedCommit(ctx)
	if err := s.check(); err != nil {
		return err
	}
	// Not under s.mu: with the queue full, a send holding it would keep
	// the writer, which takes it too, from draining the queue once
	// anyone waits to take it for writing (Close, Subscribe, a lost file).
	select {
	case s.jobs <- j:
	case <-s.stop:
		return store.ErrClosed
	case <-ctx.Done():
		return ctx.Err()
	}
	select {
	case <-j.done:
		return j.err
	case <-s.writerDone:
		// Queued as Close began, after the writer's last look: not made.
		select {
		case <-j.done:
			return j.err
		default:
			return store.ErrClosed
		}
	case <-ctx.Done():
		// The writer may still make the write (a lock held by another
		// process keeps it waiting): the caller treats it as not made,
		// which at worst repeats it.
		return fmt.Errorf("%w (the write may still be made)", ctx.Err())
	}
}

func (s *Store) writeLoop() {
	defer close(s.writerDone)
	linger := time.NewTimer(time.Hour)
	linger.Stop()
	var lastCommit time.Time
	for {
		var batch []*job
		select {
		case j := <-s.jobs:
			batch = append(batch, j)
		case <-s.stop:
			s.drain()
			return
		}
		batch = s.fill(batch, linger, batch[0].shared && s.cfg.CommitDelay > 0 && time.Since(lastCommit) < s.cfg.CommitDelay)
		s.runBatch(batch)
		lastCommit = time.Now()
	}
}

// drain finishes what is queued as the store closes, in batches; a job
// queued after this ends store.ErrClosed (submitJob). Once a batch cannot
// begin (another process holds the file's lock past the busy timeout), the
// rest end with its error at once: each would wait as long again, and a
// stop with a full queue took the busy timeout a job.
func (s *Store) drain() {
	var stuck error
	for {
		batch := s.fill(nil, nil, false)
		if len(batch) == 0 {
			return
		}
		if stuck == nil {
			stuck = s.runBatch(batch)
			continue
		}
		for _, j := range batch {
			j.err = stuck
			close(j.done)
		}
	}
}

// fill adds the jobs queued to batch, up to MaxBatch; when busy, it waits
// up to CommitDelay for more.
func (s *Store) fill(batch []*job, linger *time.Timer, busy bool) []*job {
	if busy {
		linger.Reset(s.cfg.CommitDelay)
		defer linger.Stop()
	}
	for len(batch) < s.cfg.MaxBatch {
		select {
		case j := <-s.jobs:
			batch = append(batch, j)
			continue
		default:
		}
		if !busy {
			return batch
		}
		select {
		case j := <-s.jobs:
			batch = append(batch, j)
		case <-linger.C:
			return batch
		case <-s.stop:
			return batch
		}
	}
	return batch
}

// runBatch commits the jobs of batch together. A job's own failure (a
// guard, its context) rolls back its savepoint only; a failure of SQLite
// itself aborts the transaction, and then each job runs alone, so that one
// bad write cannot fail the others. A job run alone ends with its own
// failure (runTxRaw sets it), or with its transaction's. It returns the
// error of a transaction that could not begin, which every job then ended
// with.
func (s *Store) runBatch(batch []*job) (stuck error) {
	err := s.runTx(batch)
	var before *beforeJobsError
	began := !errors.As(err, &before) // a batch of one too: drain stops at one that cannot begin
	if err != nil && len(batch) > 1 && began {
		if testHookBatchAborted != nil {
			testHookBatchAborted()
		}
		var stuck error // a job run alone that could not begin: the others would wait as long again
		for _, j := range batch {
			switch j.err = j.ctx.Err(); {
			case j.err != nil: // a caller gone waits for no lock
			case stuck != nil:
				j.err = stuck
			default:
				if err := s.runTx([]*job{j}); err != nil {
					j.err = err
					if errors.As(err, &before) {
						stuck = before.err
					}
				}
			}
			close(j.done)
		}
		s.wake()
		return stuck
	}
	if before != nil {
		// The transaction failed before any job ran (the lock held past
		// the busy timeout by another process): run alone, each would
		// wait as long again for the same lock.
		err = before.err
	}
	for _, j := range batch {
		if err != nil {
			j.err = err
		}
		close(j.done)
	}
	if err == nil {
		s.wake()
	}
	if before != nil {
		return before.err
	}
	return nil
}

// runTx runs jobs in one transaction; it returns an error when the
// transaction as a whole failed. Statements run without the jobs' contexts:
// an interrupted statement would roll back every job of the transaction.
func (s *Store) runTx(jobs []*job) error {
	return s.write.Raw(func(any) error { return s.runTxRaw(jobs) })
}

// runTxRaw is runTx on the write connection held (see wstmt).
func (s *Store) runTxRaw(jobs []*job) (err error) {
	ctx := context.Background()
	if err := s.check(); err != nil && !errors.Is(err, store.ErrClosed) {
		return err
	}
	if !slices.ContainsFunc(jobs, func(j *job) bool { return j.ctx.Err() == nil }) {
		// Every caller gone: no lock waited for, no transaction begun.
		for _, j := range jobs {
			j.err = j.ctx.Err()
		}
		return nil
	}
	s.wlock.acquire(s.cfg.BusyTimeout)
	defer s.wlock.release()
	s.begun.Add(1)
	if err := s.stmts.begin.Exec(ctx); err != nil {
		return &beforeJobsError{mapErr(err)}
	}
	defer func() {
		if err != nil {
			s.stmts.rollback.Exec(ctx)
		}
	}()
	t := &txn{s: s, ctx: ctx}
	if err := s.stmts.seqGet.QueryRow(ctx).Scan(&t.seq); err != nil {
		return &beforeJobsError{mapErr(err)}
	}
	start := t.seq
	for _, j := range jobs {
		if j.err = j.ctx.Err(); j.err != nil {
			continue
		}
		if len(jobs) == 1 {
			if err := j.fn(t); err != nil {
				if abortsTx(err) {
					return mapErr(err)
				}
				j.err = err
				if err := s.stmts.rollback.Exec(ctx); err != nil {
					return mapErr(err)
				}
				return nil
			}
			continue
		}
		if !j.partial {
			if err := j.fn(t); err != nil {
				if abortsTx(err) {
					return mapErr(err)
				}
				j.err = err // nothing written
			}
			continue
		}
		if err := s.stmts.savepoint.Exec(ctx); err != nil {
			return mapErr(err)
		}
		if err := j.fn(t); err != nil {
			if abortsTx(err) {
				return mapErr(err)
			}
			j.err = err
			if err := s.stmts.rollbackTo.Exec(ctx); err != nil {
				return mapErr(err)
			}
		}
		if err := s.stmts.release.Exec(ctx); err != nil {
			return mapErr(err)
		}
	}
	if t.seq != start {
		if err := s.stmts.seqSet.Exec(ctx, t.seq); err != nil {
			return mapErr(err)
		}
	}
	if err := s.stmts.commit.Exec(ctx); err != nil {
		return mapErr(err)
	}
	s.commits.Add(1)
	s.kickCheckpoint()
	return nil
}

// abortsTx says whether err fails the whole transaction: SQLite's own, or
// the writer's after a job wrote (txError), not a job's.
func abortsTx(err error) bool {
	var se *sqlite.Error
	var te *txError
	return errors.As(err, &se) || errors.As(err, &te)
}

// testHookBatchAborted, when set by a test, runs after a batch's
// transaction failed and before its jobs run again one by one.
var testHookBatchAborted func()

// beforeJobsError is a transaction's failure before any job ran in it
// (BEGIN, the sequence read): it says nothing of the jobs, so runBatch
// gives it to each rather than run each alone.
type beforeJobsError struct{ err error }

func (e *beforeJobsError) Error() string { return e.err.Error() }
func (e *beforeJobsError) Unwrap() error { return e.err }

// txError is a failure of the writer's own after a job may have written:
// the transaction is rolled back, as after an error of SQLite.
type txError struct{ msg string }

func (e *txError) Error() string { return e.msg }

// next hands out the next sequence number: the feed position and CAS of a
// write. Sequence numbers are taken under the write lock, so they rise in
// commit order even with other processes writing.
func (t *txn) next() uint64 {
	t.seq++
	return t.seq
}

// check reads the document w writes and checks w's guard. An upsert has
// none: it reads nothing.
func (t *txn) check(w store.Write) error {
	if w.Op == store.OpUpsert {
		return nil // the write takes its incarnation or revision from the row
	}
	var cas uint64
	var tomb bool
	var err error
	if w.Collection == order.Attempts {
		err = t.s.stmts.attCur.QueryRow(t.ctx, w.Key).Scan(&cas)
	} else {
		err = t.s.stmts.cur.QueryRow(t.ctx, w.Collection, w.Key).Scan(&cas, &tomb)
	}
	switch {
	case errors.Is(err, sql.ErrNoRows), err == nil && tomb:
		cas = 0
	case err != nil:
		return err
	}
	guard := func(e error) error { return &store.WriteError{Write: w, Err: e} }
	switch w.Op {
	case store.OpInsert:
		if cas != 0 {
			return guard(store.ErrExists)
		}
	case store.OpReplace, store.OpRemove:
		if cas == 0 {
			return guard(store.ErrNotFound)
		}
		if w.CAS != 0 && w.CAS != cas {
			return guard(store.ErrCASMismatch)
		}
	}
	return nil
}

// apply makes one guarded write, with its typed columns, and returns its CAS.
func (t *txn) apply(w store.Write, cols columns) (uint64, error) {
	if err := t.check(w); err != nil {
		return 0, err
	}
	return t.write(w, cols)
}

// A put writes a document whatever is there: an insert, or, when the key
// is there, an update of its row (a live document or a tombstone), with
// the same arguments. Not one statement (ON CONFLICT DO UPDATE): SQLite
// codes the update of an upsert to abort, which takes a statement journal
// (see the top of this file). Over a row that is there, a live document
// keeps its incarnation (created), and a tombstone's key starts a new one
// at the write's position, read from nothing but the row. The insert's OR
// IGNORE reaches the triggers' statements too, where no constraint can be
// met (TestCountsAgreeWithARecountAfterEveryKindOfWrite recounts).
const (
	putAddQuery = `INSERT OR IGNORE INTO docs (coll, key, value, seq, created, paid, confirmed, retry, fire, next_at, ts_at, dead, tally, fire_at, reason)
	VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)`
	putSetQuery = `UPDATE OR FAIL docs SET value = ?3, seq = ?4, created = CASE WHEN value IS NULL THEN ?5 ELSE created END,
		paid = ?6, confirmed = ?7, retry = ?8, fire = ?9, next_at = ?10, ts_at = ?11, dead = ?12, tally = ?13, fire_at = ?14, reason = ?15
	WHERE coll = ?1 AND key = ?2`
	// A flat collection's document (see flatReplaceQuery): over a row that
	// is there, its put names only the columns such a document has, so the
	// due minutes' triggers do not run.
	flatAddQuery = `INSERT OR IGNORE INTO docs (coll, key, value, seq, created, paid, confirmed) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)`
	flatSetQuery = `UPDATE OR FAIL docs SET value = ?3, seq = ?4, created = CASE WHEN value IS NULL THEN ?5 ELSE created END,
		paid = ?6, confirmed = ?7
	WHERE coll = ?1 AND key = ?2`
)

// put runs add, and set with the same arguments when add left the row that
// is there.
func (t *txn) put(add, set *wstmt, args ...any) error {
	if n, err := add.ExecN(t.ctx, args...); err != nil || n == 1 {
		return err
	}
	n, err := set.ExecN(t.ctx, args...)
	if err == nil && n != 1 { // the insert skips only a key that is there
		err = &txError{fmt.Sprintf("put %s/%s: neither inserted nor there to update", args[0], args[1])}
	}
	return err
}

// write makes a write whose guard was checked.
func (t *txn) write(w store.Write, cols columns) (uint64, error) {
	if w.Collection == order.Attempts {
		return t.writeAttempts(w)
	}
	seq := t.next()
	if w.Op == store.OpRemove {
		// Its position is handed out either way: an event read before it
		// (Event.Snapshot) is known to predate it.
		keep, err := t.tombstones()
		if err != nil {
			return 0, err
		}
		if keep {
			err = t.s.stmts.bury.Exec(t.ctx, seq, w.Collection, w.Key)
		} else {
			err = t.s.stmts.erase.Exec(t.ctx, w.Collection, w.Key)
		}
		return seq, err // the position of the deletion
	}
	value := string(w.Value)
	created := seq // a new incarnation of the key, unless the put's update keeps the row's
	var err error
	st := t.s.stmts
	if flat(w.Collection) {
		err = t.put(st.flatAdd, st.flatSet, w.Collection, w.Key, value, seq, created, cols.paid, cols.confirmed)
	} else {
		err = t.put(st.putAdd, st.putSet, append([]any{w.Collection, w.Key, value, seq, created}, cols.args()...)...)
	}
	if err != nil {
		return 0, err
	}
	return seq, nil
}

// A removal's two forms (see tombstones): a tombstone at the removal's
// position, or no row. Either is a point search of docs_by_key
// (TestQueryPlans); its guard was checked before it.
const (
	buryQuery = `UPDATE OR FAIL docs SET value = NULL, seq = ?, created = 0, paid = 0, confirmed = 0, retry = 0, fire = 0,
			next_at = NULL, ts_at = NULL, dead = 0, tally = NULL, fire_at = NULL, reason = NULL WHERE coll = ? AND key = ?`
	eraseQuery = `DELETE FROM docs WHERE coll = ? AND key = ?`
)

// tombstones says whether a removal leaves a tombstone (the row, its value
// NULL, at the deletion's position) for the feed to deliver, or deletes the
// row. Only a subscription opened without FeedOptions.SkipSettled wants
// deletions; the watcher's, whose outcomes are atomic, skips them. So while
// no saved subscription wants them (checkpoints.deletions), a removal
// deletes the row: a tombstone would cost its write, its index entries, a
// place in every feed read passing over it, and its purge, for nobody.
// Read once per transaction: only Subscribe changes it, in a job of its own
// that resets it.
func (t *txn) tombstones() (bool, error) {
	if t.tombs == 0 {
		var want bool
		if err := t.s.stmts.wantDeletions.QueryRow(t.ctx).Scan(&want); err != nil {
			return false, err
		}
		t.tombs = -1
		if want {
			t.tombs = 1
		}
	}
	return t.tombs > 0, nil
}

// guardedReplaceQuery is a replace whose guard is in its WHERE: no read
// before it. A point search of docs_by_key (TestQueryPlans): the unary +
// keeps SQLite from searching docs_by_seq instead.
const guardedReplaceQuery = `UPDATE OR FAIL docs SET value = ?, seq = ?, paid = ?, confirmed = ?, retry = ?, fire = ?,
		next_at = ?, ts_at = ?, dead = ?, tally = ?, fire_at = ?, reason = ?
	WHERE coll = ? AND key = ? AND +seq = ? AND value IS NOT NULL`

// The due retry documents, oldest first: their row ids, their values,
// which their flags write with fireRetry set, and the column they are due
// by.
const (
	// purgeQuery deletes tombstones below the lowest checkpoint (?1), at
	// most ?2.
	purgeQuery = `DELETE FROM docs WHERE id IN (
		SELECT id FROM docs INDEXED BY tombstones WHERE value IS NULL AND seq < ? LIMIT ?)`
	// expireQuery deletes, of the ?3 attempt records that expired first
	// (by ?1), those whose order (collection ?4) has no change past the
	// lowest checkpoint (?2); postponeQuery puts the others off by as long
	// as they are overdue, ?5 (ms) at least and ?6 at most. The feed has
	// yet to deliver their order's change, and a copy written back
	// unconfirmed, delivered after the record's expiry, would be sent
	// again (the record says it was sent). Each reads ?3 records at most,
	// however many are held back; a record held for good (behind a
	// checkpoint that no longer moves) is written again about a dozen
	// times, then once per ?6, not once per flush.
	expireQuery = `DELETE FROM attempts WHERE id IN (
		SELECT e.id FROM (SELECT id, key FROM attempts INDEXED BY attempts_expiring
			WHERE expires_at IS NOT NULL AND expires_at <= ?1 ORDER BY expires_at LIMIT ?3) AS e
		WHERE NOT EXISTS (SELECT 1 FROM docs AS d WHERE d.coll = ?4 AND d.key = e.key AND d.seq > ?2))`
	postponeQuery = `UPDATE attempts SET expires_at = ?1 + min(max(?1 - expires_at, ?5), ?6) WHERE id IN (
		SELECT e.id FROM (SELECT id, key FROM attempts INDEXED BY attempts_expiring
			WHERE expires_at IS NOT NULL AND expires_at <= ?1 ORDER BY expires_at LIMIT ?3) AS e
		WHERE EXISTS (SELECT 1 FROM docs AS d WHERE d.coll = ?4 AND d.key = e.key AND d.seq > ?2))`
	dueNextQuery = `SELECT id, value, next_at FROM docs INDEXED BY retry_next WHERE next_at IS NOT NULL AND next_at <= ? ORDER BY next_at LIMIT ?`
	dueTSQuery   = `SELECT id, value, ts_at FROM docs INDEXED BY retry_ts WHERE ts_at IS NOT NULL AND ts_at < ? ORDER BY ts_at LIMIT ?`
)

// flagQuery writes a retry document due by col (next_at or ts_at) flagged
// (its value with fireRetry set, which the sweep makes), keeps when it
// fell due in fire_at (col plus the third argument: the quantum for a ts,
// 0 for a nextAttemptAt) and clears col. It
// names only that column of the two: a retry document has at most one of
// them (classifyRetry), and the due minutes' triggers of the other would
// run for nothing (TestWriteTriggers). The document is found by its row
// id, which the sweep read from col's index. The value is made in Go, not
// by json_set: a statement that calls a function gets a statement journal
// (see the top of this file).
func flagQuery(col string) string {
	return `UPDATE OR FAIL docs SET value = ?1, seq = ?2, fire = 1, fire_at = ` + col + ` + ?3, ` + col + ` = NULL WHERE id = ?4`
}

// flatReplaceQuery is guardedReplaceQuery for a document outside the retry
// and dead-letter collections (an order, most often): its other columns
// are always zero or NULL, so it sets none of them, and the triggers that
// keep the due minutes, which fire on an UPDATE that names their column,
// do not run for it (TestWriteTriggers).
const flatReplaceQuery = `UPDATE OR FAIL docs SET value = ?, seq = ?, paid = ?, confirmed = ?
	WHERE coll = ? AND key = ? AND +seq = ? AND value IS NOT NULL`

// guardedReplace says whether w is a replace the writer can make in one
// statement, its guard in the statement: a document's, with a CAS.
func guardedReplace(w store.Write) bool {
	return w.Op == store.OpReplace && w.CAS != 0 && w.Collection != order.Attempts
}

// replace makes a guardedReplace write and returns its CAS. When the guard
// fails, nothing is written, and the error is check's: the document is
// gone, or its CAS is not w's.
func (t *txn) replace(w store.Write, cols columns) (uint64, error) {
	seq := t.next()
	var n int64
	var err error
	if flat(w.Collection) {
		n, err = t.s.stmts.replaceFlat.ExecN(t.ctx, string(w.Value), seq, cols.paid, cols.confirmed, w.Collection, w.Key, w.CAS)
	} else {
		args := append(append([]any{string(w.Value), seq}, cols.args()...), w.Collection, w.Key, w.CAS)
		n, err = t.s.stmts.replace.ExecN(t.ctx, args...)
	}
	if err != nil {
		return 0, err
	}
	if n == 1 {
		return seq, nil
	}
	t.seq-- // not taken
	if err := t.check(w); err != nil {
		return 0, err
	}
	return 0, fmt.Errorf("replace %s/%s: no row changed, yet its guard holds", w.Collection, w.Key)
}

// An attempt record's write: an insert, or, when its key is there, an
// update of the record there (see putAddQuery).
const (
	attAddQuery = `INSERT OR IGNORE INTO attempts (key, value, rev, expires_at) VALUES (?, ?, 1, ?)`
	attPutQuery = `UPDATE OR FAIL attempts SET value = ?, rev = rev + 1, expires_at = ? WHERE key = ? RETURNING rev`
)

// writeAttempts writes an attempt record in its own table: no sequence
// number (it is not on the feed), a revision for its CAS (one more than
// the row's: the one check read, for a guarded write), and its expiry.
func (t *txn) writeAttempts(w store.Write) (uint64, error) {
	st := t.s.stmts
	if w.Op == store.OpRemove {
		return 0, st.attDel.Exec(t.ctx, w.Key)
	}
	var expires any
	if !w.Expiry.IsZero() {
		expires = w.Expiry.UnixMilli()
	}
	value := string(w.Value)
	if n, err := st.attAdd.ExecN(t.ctx, w.Key, value, expires); err != nil || n == 1 {
		return 1, err
	}
	var rev uint64
	err := st.attPut.QueryRow(t.ctx, value, expires, w.Key).Scan(&rev)
	if errors.Is(err, sql.ErrNoRows) { // the insert skips only a key that is there
		err = &txError{"attempt record " + w.Key + ": neither inserted nor there to update"}
	}
	return rev, err
}
