package embedded

import (
	"context"
	"fmt"
	"os"
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
