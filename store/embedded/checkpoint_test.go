package embedded

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ordermail/ordermail/order"
	"github.com/ordermail/ordermail/store"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestCheckpointsAreMadeOffTheWriter: writes of some 3,000 pages, fewer
// than the writer's own checkpoints wait for, reach the database file by
// checkpointLoop's checkpoints.
func TestCheckpointsAreMadeOffTheWriter(t *testing.T) {
	t.Parallel()
	s := openTest(t)
	ctx := context.Background()
	body := strings.Repeat("x", 2000)
	for from := 0; from < 6000; from += 500 {
		var writes []store.Write
		for i := from; i < from+500; i++ {
			writes = append(writes, store.Write{Op: store.OpUpsert, Collection: order.Inbound, Key: fmt.Sprintf("o%05d", i),
				Value: fmt.Appendf(nil, `{"email":"a@b.c","note":%q}`, body)})
		}
		_, err := s.Apply(ctx, writes)
		require.NoError(t, err)
	}
	// In WAL mode the database file grows only as checkpoints copy pages
	// into it, and the writer's own wait for 10,000.
	size := func() int64 {
		fi, err := os.Stat(s.cfg.Path)
		if err != nil {
			return -1
		}
		return fi.Size()
	}
	if !assert.Eventually(t, func() bool { return size() >= 2500*4096 }, time.Minute, 10*time.Millisecond) {
		t.Fatalf("the database file holds %d bytes of about 3,000 pages (12MB) written", size())
	}
}

// TestExpiredDocumentsGoWhileTheFeedIsIdle: an attempt record's expiry is
// kept on a store whose feed does not move (no order comes), as Couchbase
// keeps it: a feed that reads nothing still deletes the expired ones, at
// most once an ExpireInterval.
func TestExpiredDocumentsGoWhileTheFeedIsIdle(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	s, err := Open(ctx, Config{Path: t.TempDir() + "/o.db", ExpireInterval: 50 * time.Millisecond})
	require.NoError(t, err)
	t.Cleanup(func() { s.Close() })
	_, err = s.Apply(ctx, []store.Write{
		{Op: store.OpUpsert, Collection: order.Attempts, Key: "gone", Value: []byte(`{"docId":"gone"}`), Expiry: time.Now().Add(200 * time.Millisecond)},
		{Op: store.OpUpsert, Collection: order.Attempts, Key: "kept", Value: []byte(`{"docId":"kept"}`)},
	})
	require.NoError(t, err)
	sub, err := s.Subscribe(ctx, "idle", []string{order.Inbound, order.Retry}, store.FeedOptions{})
	require.NoError(t, err)
	done := make(chan error, 1)
	go func() {
		_, err := sub.Next(ctx) // nothing comes: it waits, and looks again now and then
		done <- err
	}()
	rows, last := []int{-1}, []error{nil}
	gone := func() bool {
		last[0] = s.read.QueryRowContext(ctx, `SELECT count(*) FROM attempts WHERE key = 'gone'`).Scan(&rows[0])
		return last[0] == nil && rows[0] == 0
	}
	if !assert.Eventually(t, gone, 30*time.Second, 20*time.Millisecond) {
		t.Fatalf("the expired record is still stored (%d rows, %v) while the feed is idle", rows[0], last[0])
	}
	_, err = s.Get(ctx, order.Attempts, "kept")
	assert.NoError(t, err, "no expiry: kept")
	cancel()
	assert.ErrorIs(t, <-done, context.Canceled)
	require.NoError(t, sub.Close(context.Background()))
}

// TestABacklogOfExpiredDocumentsGoesBatchAfterBatch: more expired
// documents than a batch go batch after batch, a flush apart, not a batch
// an ExpireInterval (a million records: 17 hours at a batch a minute).
func TestABacklogOfExpiredDocumentsGoesBatchAfterBatch(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	s, err := Open(ctx, Config{Path: t.TempDir() + "/o.db", ExpireInterval: time.Hour})
	require.NoError(t, err)
	t.Cleanup(func() { s.Close() })
	var writes []store.Write
	for i := range 2*purgeBatch + 500 {
		writes = append(writes, store.Write{Op: store.OpUpsert, Collection: order.Attempts, Key: fmt.Sprintf("a%05d", i),
			Value: []byte(`{}`), Expiry: time.Now().Add(-time.Minute)})
	}
	_, err = s.Apply(ctx, writes)
	require.NoError(t, err)
	sub, err := s.Subscribe(ctx, "idle", []string{order.Inbound}, store.FeedOptions{})
	require.NoError(t, err)
	done := make(chan error, 1)
	go func() {
		_, err := sub.Next(ctx)
		done <- err
	}()
	rows, last := []int{-1}, []error{nil}
	gone := func() bool {
		last[0] = s.read.QueryRowContext(ctx, `SELECT count(*) FROM attempts`).Scan(&rows[0])
		return last[0] == nil && rows[0] == 0
	}
	if !assert.Eventually(t, gone, time.Minute, 20*time.Millisecond) {
		t.Fatalf("%d expired records left (%v), an hour's ExpireInterval notwithstanding", rows[0], last[0])
	}
	cancel()
	assert.ErrorIs(t, <-done, context.Canceled)
	require.NoError(t, sub.Close(context.Background()))
}

// One flush removes expired documents batch after batch while they come
// back whole, up to flushRounds transactions: removals keep up with a
// service that settles (and so later expires) more than a batch a second,
// and stay bounded. At a batch a flush, the records of ten thousand orders
// a second grew for good.
func TestAFlushExpiresBatchAfterBatchBounded(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s, err := Open(ctx, Config{Path: t.TempDir() + "/o.db", ExpireInterval: time.Hour})
	require.NoError(t, err)
	t.Cleanup(func() { s.Close() })
	const extra = 700
	var writes []store.Write
	for i := range flushRounds*purgeBatch + extra {
		writes = append(writes, store.Write{Op: store.OpUpsert, Collection: order.Attempts, Key: fmt.Sprintf("a%06d", i),
			Value: []byte(`{}`), Expiry: time.Now().Add(-time.Minute)})
	}
	_, err = s.Apply(ctx, writes)
	require.NoError(t, err)
	sub, err := s.Subscribe(ctx, "f", []string{order.Inbound}, store.FeedOptions{})
	require.NoError(t, err)
	left := func() int {
		var n int
		require.NoError(t, s.read.QueryRowContext(ctx, `SELECT count(*) FROM attempts`).Scan(&n))
		return n
	}
	f := sub.(*subscription)
	f.expired = time.Time{} // due, whatever a flush of its own did meanwhile
	require.NoError(t, f.flush(ctx))
	assert.Equal(t, extra, left(), "flushRounds batches went in one flush, and no more")
	require.NoError(t, sub.Close(ctx))
	assert.Zero(t, left())
}

// TestAnAttemptRecordOutlivesItsOrdersUndeliveredChange: an expired attempt
// record goes once the feed has delivered every change of its order, not
// before: a confirmed order's copy written back unconfirmed (an order
// system saving what it read before the mark), delivered after the
// record's expiry behind a backlog or an outage, would find no record and
// be sent again: it is put off an ExpireInterval at a time. A record whose
// order has no change left to deliver (or no order) goes at its expiry.
func TestAnAttemptRecordOutlivesItsOrdersUndeliveredChange(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s, err := Open(ctx, Config{Path: t.TempDir() + "/o.db", ExpireInterval: 50 * time.Millisecond})
	require.NoError(t, err)
	t.Cleanup(func() { s.Close() })
	_, err = s.Upsert(ctx, order.Inbound, "o", []byte(`{"email":"a@example.com","paymentStatus":"paid"}`))
	require.NoError(t, err)
	var writes []store.Write
	for _, key := range []string{"o", "gone"} {
		writes = append(writes, store.Write{Op: store.OpUpsert, Collection: order.Attempts, Key: key,
			Value: []byte(`{}`), Expiry: time.Now().Add(-time.Millisecond)}) // put off by the interval, its overdue being less
	}
	_, err = s.Apply(ctx, writes)
	require.NoError(t, err)
	has := func(key string) bool {
		_, err := s.Get(ctx, order.Attempts, key)
		return err == nil
	}
	sub, err := s.Subscribe(ctx, "f", []string{order.Inbound}, store.FeedOptions{})
	require.NoError(t, err)
	defer sub.Close(ctx)
	f := sub.(*subscription)
	f.expired = time.Time{} // due
	require.NoError(t, f.flush(ctx))
	assert.True(t, has("o"), "its order's change is not delivered yet")
	assert.False(t, has("gone"), "no order: it goes at its expiry")

	ev, err := sub.Next(ctx)
	require.NoError(t, err)
	require.Equal(t, "o", ev.Key)
	ev.Ack()
	require.Eventually(t, func() bool {
		f.expired = time.Time{}
		return f.flush(ctx) == nil && !has("o")
	}, time.Minute, 10*time.Millisecond, "delivered and acknowledged, it goes once put off no more")
}

// TestAFailingPurgeHoldsNoEventBack: the purges are housekeeping: when
// they fail (an index damaged) the feed goes on, says it once, and saves
// its checkpoint; they are tried again an ExpireInterval later.
func TestAFailingPurgeHoldsNoEventBack(t *testing.T) {
	ctx := context.Background()
	s, err := Open(ctx, Config{Path: filepath.Join(t.TempDir(), "o.db"), ExpireInterval: time.Hour})
	require.NoError(t, err)
	t.Cleanup(func() { s.Close() })
	orig := s.stmts.expire
	require.NoError(t, s.write.Raw(func(dc any) error {
		st, err := prepareRaw(ctx, dc, `SELECT abs(-9223372036854775807 - 1 + 0 * ?) + 0 * ? + 0 * ? + 0 * ?`) // fails as it runs: integer overflow
		s.stmts.expire = st
		return err
	}))
	t.Cleanup(func() {
		require.NoError(t, s.write.Raw(func(any) error { f := s.stmts.expire; s.stmts.expire = orig; return f.Close() }))
	})
	sub, err := s.Subscribe(ctx, "w", []string{order.Inbound}, store.FeedOptions{})
	require.NoError(t, err)
	for i := range 3 {
		_, err := s.Insert(ctx, order.Inbound, fmt.Sprintf("o%d", i), []byte(`{"paymentStatus":"paid"}`))
		require.NoError(t, err)
	}
	f := sub.(*subscription)
	var got int
	var errs []error
	for try := 0; got < 3 && try < 50; try++ { // bounded, for the failure's message; a read that waits is no event lost
		f.flushed = time.Time{} // a flush before every read
		c, cancel := context.WithTimeout(ctx, 2*time.Second)
		ev, err := sub.Next(c)
		cancel()
		switch {
		case err == nil:
			got++
			ev.Ack()
		case !errors.Is(err, context.DeadlineExceeded):
			errs = append(errs, err)
		}
	}
	assert.Equal(t, 3, got, "every event handed out")
	require.Len(t, errs, 1, "said once: %v", errs)
	assert.ErrorContains(t, errs[0], "purging tombstones and expired documents failed (the feed goes on")
	require.NoError(t, f.flush(ctx), "the purges' failure said once")
	assert.Equal(t, uint64(3), f.saved, "the checkpoint saved all the same")
}

// TestABatchOfOneThatCannotBeginIsStuck: a write batch, of one job too,
// whose transaction cannot begin (another process holds the lock past the
// busy timeout) says so, so that a drain at Close stops there rather than
// wait as long again for each batch behind it.
func TestABatchOfOneThatCannotBeginIsStuck(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "o.db")
	s, err := Open(ctx, Config{Path: path, BusyTimeout: 100 * time.Millisecond})
	require.NoError(t, err)
	t.Cleanup(func() { s.Close() })
	other, err := Open(ctx, Config{Path: path})
	require.NoError(t, err)
	t.Cleanup(func() { other.Close() })
	held, release := make(chan struct{}), make(chan struct{})
	go other.submit(ctx, func(*txn) error { close(held); <-release; return nil })
	<-held
	defer close(release)
	one := &job{ctx: ctx, fn: func(*txn) error { return nil }, done: make(chan struct{})}
	stuck := s.runBatch([]*job{one})
	require.Error(t, one.err)
	assert.Error(t, stuck, "a batch of one that could not begin")
}

// TestAFlushCutShortIsNoFailureOfThePurges: a flush whose reader stopped
// waiting (its context ended) failed nothing of the purges: the next flush
// purges, not an ExpireInterval later.
func TestAFlushCutShortIsNoFailureOfThePurges(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s, err := Open(ctx, Config{Path: t.TempDir() + "/o.db", ExpireInterval: time.Hour})
	require.NoError(t, err)
	t.Cleanup(func() { s.Close() })
	_, err = s.Apply(ctx, []store.Write{{Op: store.OpUpsert, Collection: order.Attempts, Key: "a", Value: []byte(`{}`), Expiry: time.Now().Add(-time.Minute)}})
	require.NoError(t, err)
	sub, err := s.Subscribe(ctx, "f", []string{order.Inbound}, store.FeedOptions{})
	require.NoError(t, err)
	defer sub.Close(ctx)
	f := sub.(*subscription)
	ended, cancel := context.WithCancel(ctx)
	cancel()
	f.expired = time.Time{}
	require.ErrorIs(t, f.flush(ended), context.Canceled)
	f.expired = time.Time{}
	require.NoError(t, f.flush(ctx))
	_, err = s.Get(ctx, order.Attempts, "a")
	assert.ErrorIs(t, err, store.ErrNotFound, "purged at the next flush")
}

// TestAFlushExpiresPastHeldRecords: expired records held back (their
// orders' changes undelivered) among free ones do not end a flush's
// rounds: every free one goes in one flush, the held ones are put off.
func TestAFlushExpiresPastHeldRecords(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s, err := Open(ctx, Config{Path: t.TempDir() + "/o.db", ExpireInterval: time.Hour})
	require.NoError(t, err)
	t.Cleanup(func() { s.Close() })
	const n = 3 * purgeBatch
	var writes []store.Write
	for i := range n {
		key := fmt.Sprintf("a%06d", i)
		if i%2 == 0 { // held: its order's change is still to be delivered
			writes = append(writes, store.Write{Op: store.OpUpsert, Collection: order.Inbound, Key: key, Value: []byte(`{"paymentStatus":"paid"}`)})
		}
		writes = append(writes, store.Write{Op: store.OpUpsert, Collection: order.Attempts, Key: key, Value: []byte(`{}`),
			Expiry: time.Now().Add(-time.Minute)})
	}
	_, err = s.Apply(ctx, writes)
	require.NoError(t, err)
	sub, err := s.Subscribe(ctx, "f", []string{order.Inbound}, store.FeedOptions{})
	require.NoError(t, err)
	defer sub.Close(ctx)
	f := sub.(*subscription)
	f.expired = time.Time{}
	require.NoError(t, f.flush(ctx))
	var left, expired int
	require.NoError(t, s.read.QueryRowContext(ctx, `SELECT count(*), count(CASE WHEN expires_at <= ? THEN 1 END) FROM attempts`,
		time.Now().UnixMilli()).Scan(&left, &expired))
	assert.Equal(t, n/2, left, "every free record gone, every held one kept")
	assert.Zero(t, expired, "the held ones put off")

	// Held for good (a checkpoint that no longer moves): each is put off
	// by as long as it is overdue, so written again ever more rarely.
	writes = writes[:0]
	for i := 0; i < n; i += 2 {
		writes = append(writes, store.Write{Op: store.OpUpsert, Collection: order.Attempts, Key: fmt.Sprintf("a%06d", i), Value: []byte(`{}`),
			Expiry: time.Now().Add(-3 * time.Hour)})
	}
	_, err = s.Apply(ctx, writes)
	require.NoError(t, err)
	f.expired = time.Time{}
	require.NoError(t, f.flush(ctx))
	var soonest int64
	require.NoError(t, s.read.QueryRowContext(ctx, `SELECT min(expires_at) FROM attempts`).Scan(&soonest))
	assert.Greater(t, soonest, time.Now().Add(2*time.Hour).UnixMilli(), "put off by its overdue (3h), not the interval (1h)")
}
