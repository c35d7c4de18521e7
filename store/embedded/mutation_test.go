package embedded

// Tests a mutation audit (2026-12-07) called for: each fails on a change
// to the store that the package's other tests let through.

import (
	"context"
	"database/sql"
	"fmt"
	"path/filepath"
	"testing"
	"time"

	"github.com/ordermail/ordermail/order"
	"github.com/ordermail/ordermail/store"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// While a subscription wants deletions, a removal leaves a tombstone: the
// key reads, counts and is guarded as absent all the same.
func TestATombstoneIsAbsent(t *testing.T) {
	ctx := context.Background()
	s := openTest(t)
	sub, err := s.Subscribe(ctx, "audit", []string{order.Inbound}, store.FeedOptions{})
	require.NoError(t, err)
	defer sub.Close(ctx)

	_, err = s.Upsert(ctx, order.Inbound, "o", []byte(`{"email":"a@b.c","paymentStatus":"paid"}`))
	require.NoError(t, err)
	require.NoError(t, s.Remove(ctx, order.Inbound, "o", 0))
	var tomb int
	require.NoError(t, s.read.QueryRow(`SELECT count(*) FROM docs WHERE key = 'o' AND value IS NULL`).Scan(&tomb))
	require.Equal(t, 1, tomb, "the removal left a tombstone")

	_, err = s.Get(ctx, order.Inbound, "o")
	assert.ErrorIs(t, err, store.ErrNotFound, "a tombstone reads as absent")
	c, err := s.Counts(ctx)
	require.NoError(t, err)
	assert.Equal(t, 0, c.OrdersPaid, "a removed paid order is not counted")
	_, err = s.Replace(ctx, order.Inbound, "o", []byte(`{}`), 0)
	assert.ErrorIs(t, err, store.ErrNotFound, "no replace of a removed document")
	_, err = s.Insert(ctx, order.Inbound, "o", []byte(`{}`))
	assert.NoError(t, err, "a removed key can be created again")

	// A retry document replaced with the CAS its removal returned.
	_, err = s.Upsert(ctx, order.Retry, "r", []byte(`{"docId":"r","attempt":1,"ts":1}`))
	require.NoError(t, err)
	cas, err := s.Apply(ctx, []store.Write{{Op: store.OpRemove, Collection: order.Retry, Key: "r"}})
	require.NoError(t, err)
	_, err = s.Replace(ctx, order.Retry, "r", []byte(`{"docId":"r","attempt":2,"ts":1}`), cas[0])
	assert.ErrorIs(t, err, store.ErrNotFound, "the removal's position is no CAS to replace a deleted document with")
}

// The purge keeps the tombstone right after the lowest checkpoint: the
// subscription there reads it next.
func TestPurgeKeepsTheTombstoneJustPastTheLowestCheckpoint(t *testing.T) {
	ctx := context.Background()
	s := openTest(t)
	fast, err := s.Subscribe(ctx, "fast", []string{order.Inbound}, store.FeedOptions{})
	require.NoError(t, err)
	_, err = s.Insert(ctx, order.Inbound, "k", []byte(`{}`))
	require.NoError(t, err)
	slow, err := s.Subscribe(ctx, "slow", []string{order.Inbound}, store.FeedOptions{FromNow: true})
	require.NoError(t, err) // its checkpoint: k's insertion
	require.NoError(t, s.Remove(ctx, order.Inbound, "k", 0))
	ev, err := fast.Next(ctx)
	require.NoError(t, err)
	require.True(t, ev.Deleted)
	ev.Ack()
	require.NoError(t, fast.Close(ctx)) // saves, purges below the lowest checkpoint
	// The deadline ends the wait only when the deletion is lost.
	wait, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	ev, err = slow.Next(wait)
	require.NoError(t, err, "the subscription behind lost the deletion")
	assert.True(t, ev.Deleted)
	assert.Equal(t, "k", ev.Key)
	require.NoError(t, slow.Close(ctx))
}

// A first release's file with more documents than one page of the copy
// keeps every one of them.
func TestMigratesAFirstReleaseFileOfManyPages(t *testing.T) {
	path := filepath.Join(t.TempDir(), "old.db")
	db, err := sql.Open("sqlite", "file:"+path)
	require.NoError(t, err)
	_, err = db.Exec(schemaV1)
	require.NoError(t, err)
	const n = 2500
	tx, err := db.Begin()
	require.NoError(t, err)
	for i := range n {
		_, err = tx.Exec(`INSERT INTO docs (coll, key, value, seq) VALUES ('inbound', ?, '{"paymentStatus":"paid"}', ?)`, fmt.Sprintf("o%05d", i), i+1)
		require.NoError(t, err)
	}
	_, err = tx.Exec(`UPDATE counters SET value = ?`, n)
	require.NoError(t, err)
	require.NoError(t, tx.Commit())
	require.NoError(t, db.Close())

	s := openUpgraded(t, path)
	got := 0
	require.NoError(t, s.Scan(context.Background(), order.Inbound, "", func(store.Doc) error { got++; return nil }))
	assert.Equal(t, n, got, "every document carried over")
	c, err := s.Counts(context.Background())
	require.NoError(t, err)
	assert.Equal(t, n, c.OrdersPaid)
}

// A version 9 file with more dead letters than one page of the upgrade
// gives each its reason.
func TestMigratesAVersion9FileOfManyPages(t *testing.T) {
	path, db := fileAtVersion(t, 9)
	const n = 1500
	docs := make([]oldDoc, n)
	for i := range docs {
		k := fmt.Sprintf("d%05d", i)
		docs[i] = oldDoc{key: k, value: `{"docId":"` + k + `","reason":"permanent"}`, tally: "dead: permanent"}
	}
	writeOldDocs(t, db, order.DeadLetter, docs)
	s := openUpgraded(t, path)
	got := 0
	require.NoError(t, s.ScanDeadLetters(context.Background(), "permanent", "", func(store.Doc) error { got++; return nil }))
	assert.Equal(t, n, got)
}

// A version 4 file's retries due by ts are in the due count once it is
// upgraded (migrateV5 counts them by minute).
func TestMigratesAVersion4FilesTSDueRetries(t *testing.T) {
	path, db := fileAtVersion(t, 4)
	ts := time.Now().Add(-2 * time.Hour).UnixMilli()
	for i := range 3 {
		k := fmt.Sprintf("r%d", i)
		_, err := db.Exec(`INSERT INTO docs (coll, key, value, seq, created, retry, ts_at, tally) VALUES ('retry', ?, ?, ?, ?, 1, ?, 'retrying')`,
			k, fmt.Sprintf(`{"docId":"%s","attempt":1,"ts":%d}`, k, ts), i+1, i+1, ts)
		require.NoError(t, err)
	}
	_, err := db.Exec(`UPDATE counters SET value = 3 WHERE name = 'seq'`)
	require.NoError(t, err)
	require.NoError(t, db.Close())
	s := openUpgraded(t, path)
	b, err := s.Backlog(context.Background(), time.Now(), 15*time.Second)
	require.NoError(t, err)
	assert.Equal(t, 3, b.Due)
	assert.Equal(t, recountMinutes(t, s), dueMinutes(t, s))
}

// A sample retry document (due by ts) is due a quantum after its ts, and
// not a millisecond before, even when another retry is due and the sweep
// runs.
func TestTheSweepWaitsAQuantumAfterTS(t *testing.T) {
	ctx := context.Background()
	s := openTest(t)
	now := time.Now()
	q := 15 * time.Second
	for k, v := range map[string]string{
		"due":   fmt.Sprintf(`{"docId":"due","attempt":1,"ts":1,"nextAttemptAt":%d}`, now.Add(-time.Minute).UnixMilli()),
		"young": fmt.Sprintf(`{"docId":"young","attempt":1,"ts":%d}`, now.Add(-q/2).UnixMilli()),
		"edge":  fmt.Sprintf(`{"docId":"edge","attempt":1,"ts":%d}`, now.Add(-q).UnixMilli()),
		"oldTS": fmt.Sprintf(`{"docId":"oldTS","attempt":1,"ts":%d}`, now.Add(-q-time.Millisecond).UnixMilli()),
	} {
		_, err := s.Upsert(ctx, order.Retry, k, []byte(v))
		require.NoError(t, err)
	}
	res, err := s.SweepRetries(ctx, now, q, 100)
	require.NoError(t, err)
	assert.Equal(t, 2, res.Flagged, "only due and oldTS are due")
	for _, k := range []string{"young", "edge"} {
		d, err := s.Get(ctx, order.Retry, k)
		require.NoError(t, err)
		r, err := order.DecodeRetryDoc(d.Value)
		require.NoError(t, err)
		assert.False(t, r.FireRetry, k)
	}
}

// A subscription that wants deletions, registered in the same transaction
// as removals (one batch), gets a tombstone for the removals after it.
func TestASubscriptionInTheBatchGetsTheRemovalsAfterIt(t *testing.T) {
	ctx := context.Background()
	s := openTest(t)
	for _, k := range []string{"a", "b"} {
		_, err := s.Insert(ctx, order.Inbound, k, []byte(`{}`))
		require.NoError(t, err)
	}
	started, release := make(chan struct{}), make(chan struct{})
	go s.submit(ctx, func(*txn) error { close(started); <-release; return nil })
	<-started
	waitQueued := func(n int) {
		require.Eventually(t, func() bool { return len(s.jobs) == n }, 10*time.Second, time.Millisecond)
	}
	errs := make(chan error, 3)
	go func() { errs <- s.Remove(ctx, order.Inbound, "a", 0) }()
	waitQueued(1)
	subc := make(chan store.Subscription, 1)
	go func() {
		sub, err := s.Subscribe(ctx, "audit", []string{order.Inbound}, store.FeedOptions{FromNow: true})
		errs <- err
		subc <- sub
	}()
	waitQueued(2)
	go func() { errs <- s.Remove(ctx, order.Inbound, "b", 0) }()
	waitQueued(3)
	close(release)
	for range 3 {
		require.NoError(t, <-errs)
	}
	sub := <-subc
	defer sub.Close(ctx)
	var tomb int
	require.NoError(t, s.read.QueryRow(`SELECT count(*) FROM docs WHERE key = 'b' AND value IS NULL`).Scan(&tomb))
	assert.Equal(t, 1, tomb, "the removal after the subscription leaves it a tombstone")
}

// A commit that fails is no success: the caller hears of it, and nothing
// is there.
func TestAFailedCommitIsNotAcknowledged(t *testing.T) {
	ctx := context.Background()
	s := openTest(t)
	orig := s.stmts.commit
	require.NoError(t, s.write.Raw(func(dc any) error {
		st, err := prepareRaw(ctx, dc, `SELECT abs(-9223372036854775807 - 1)`) // fails as it runs
		s.stmts.commit = st
		return err
	}))
	_, err := s.Upsert(ctx, order.Inbound, "o", []byte(`{}`))
	failing := s.stmts.commit
	require.NoError(t, s.write.Raw(func(any) error { s.stmts.commit = orig; return failing.Close() }))
	assert.Error(t, err, "the commit failed")
	_, err = s.Get(ctx, order.Inbound, "o")
	assert.ErrorIs(t, err, store.ErrNotFound)
	_, err = s.Upsert(ctx, order.Inbound, "p", []byte(`{}`))
	assert.NoError(t, err, "the writer goes on")
}

// A job queued after the writer's last look is not made: its caller is
// told so, never a success.
func TestAJobTheWriterNeverTookIsNotASuccess(t *testing.T) {
	done := make(chan struct{})
	close(done)
	s := &Store{jobs: make(chan *job, 1), stop: make(chan struct{}), writerDone: done}
	err := s.submit(context.Background(), func(*txn) error { return nil })
	assert.ErrorIs(t, err, store.ErrClosed)
}

// A checkpoint save that failed is made at the next flush (here Close):
// what was acknowledged is not delivered again.
func TestAFailedCheckpointSaveIsMadeAgain(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "o.db")
	s, err := Open(ctx, Config{Path: path, BusyTimeout: 100 * time.Millisecond})
	require.NoError(t, err)
	defer s.Close()
	sub, err := s.Subscribe(ctx, "feed", []string{order.Inbound}, store.FeedOptions{})
	require.NoError(t, err)
	for _, k := range []string{"a", "b"} {
		_, err := s.Insert(ctx, order.Inbound, k, []byte(`{}`))
		require.NoError(t, err)
	}
	ev, err := sub.Next(ctx)
	require.NoError(t, err)
	require.Equal(t, "a", ev.Key)
	ev.Ack()
	time.Sleep(flushEvery + 100*time.Millisecond)

	other, err := sql.Open("sqlite", "file:"+path)
	require.NoError(t, err)
	defer other.Close()
	conn, err := other.Conn(ctx)
	require.NoError(t, err)
	_, err = conn.ExecContext(ctx, `BEGIN IMMEDIATE`)
	require.NoError(t, err)
	_, err = sub.Next(ctx) // its flush finds the file's write lock held
	require.Error(t, err)
	_, err = conn.ExecContext(ctx, `ROLLBACK`)
	require.NoError(t, err)
	conn.Close()
	require.NoError(t, sub.Close(ctx))

	sub, err = s.Subscribe(ctx, "feed", []string{order.Inbound}, store.FeedOptions{})
	require.NoError(t, err)
	defer sub.Close(ctx)
	ev, err = sub.Next(ctx)
	require.NoError(t, err)
	assert.Equal(t, "b", ev.Key, "a, acknowledged, is not delivered again")
}
