package embedded

import (
	"context"
	"errors"
	"fmt"
	"github.com/ordermail/ordermail/store/storetest"
	"path/filepath"
	"testing"
	"time"

	"github.com/ordermail/ordermail/store"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// When a batch's transaction fails as a whole, each job runs again alone:
// every job then ends with its own outcome. A guard that fails in the
// rerun is that job's error, never a success with nothing written.
func TestAJobRunAgainAloneKeepsItsOwnFailure(t *testing.T) {
	ctx := context.Background()
	s, err := Open(ctx, Config{Path: filepath.Join(t.TempDir(), "o.db")})
	require.NoError(t, err)
	defer s.Close()
	cas, err := s.Insert(ctx, "inbound", "order_1", []byte(`{"v":1}`))
	require.NoError(t, err)
	_, err = s.Insert(ctx, "inbound", "order_2", []byte(`{"v":1}`))
	require.NoError(t, err)

	// Hold the writer, so that the jobs below are taken as one batch.
	started, release := make(chan struct{}), make(chan struct{})
	go s.submit(ctx, func(*txn) error { close(started); <-release; return nil })
	<-started

	type result struct {
		cas []uint64
		err error
	}
	apply := func(w store.Write) chan result {
		out := make(chan result, 1)
		go func() {
			cas, err := s.Apply(ctx, []store.Write{w})
			out <- result{cas, err}
		}()
		return out
	}
	stale := apply(store.Write{Op: store.OpReplace, Collection: "inbound", Key: "order_1", Value: []byte(`{"v":2}`), CAS: cas + 999})
	exists := apply(store.Write{Op: store.OpInsert, Collection: "inbound", Key: "order_2", Value: []byte(`{"v":2}`)})
	good := apply(store.Write{Op: store.OpInsert, Collection: "inbound", Key: "order_3", Value: []byte(`{"v":1}`)})
	// A failure that aborts the whole transaction.
	aborted := make(chan error, 1)
	queued := []int{0} // the last count seen, for the failure message
	waitQueued := func(n int) {
		require.Eventually(t, func() bool {
			queued[0] = len(s.jobs)
			return queued[0] == n
		}, 10*time.Second, time.Millisecond, "jobs queued %v, want %d", queued, n)
	}
	waitQueued(3)
	go func() { aborted <- s.submit(ctx, func(*txn) error { return &txError{"transaction lost"} }) }()
	waitQueued(4)
	close(release)

	var we *store.WriteError
	r := <-stale
	assert.True(t, errors.As(r.err, &we), "a replace under a stale CAS gave %v, CAS %v", r.err, r.cas)
	r = <-exists
	assert.True(t, errors.As(r.err, &we), "an insert of a key there gave %v, CAS %v", r.err, r.cas)
	r = <-good
	require.NoError(t, r.err)
	assert.NotZero(t, r.cas[0])
	assert.Error(t, <-aborted)

	for key, want := range map[string]string{"order_1": `{"v":1}`, "order_2": `{"v":1}`, "order_3": `{"v":1}`} {
		d, err := s.Get(ctx, "inbound", key)
		require.NoError(t, err, key)
		assert.JSONEq(t, want, string(d.Value), key)
	}
}

// When another process holds the write lock past the busy timeout, a
// batch fails at BEGIN: its jobs all get that failure at once, and are not
// run again one by one, each waiting the busy timeout again for the same
// lock (the last of N writes failed N busy timeouts late).
func TestABatchThatCannotBeginIsNotRunAgainJobByJob(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "o.db")
	// Long enough that the ten writes below queue while the first one's
	// BEGIN waits, on a busy machine too.
	s, err := Open(ctx, Config{Path: path, BusyTimeout: 3 * time.Second})
	require.NoError(t, err)
	defer s.Close()

	conn := storetest.HoldWriteLock(t, path)
	defer conn.ExecContext(ctx, `ROLLBACK`)

	begun := s.begun.Load()
	errs := make(chan error, 11)
	upsert := func(key string) {
		_, err := s.Upsert(ctx, "inbound", key, []byte(`{}`))
		errs <- err
	}
	go upsert("first") // the writer waits at its BEGIN meanwhile
	queued := []int{0}
	require.Eventually(t, func() bool { queued[0] = len(s.jobs); return queued[0] == 0 && s.begun.Load() > begun },
		10*time.Second, time.Millisecond, "the first write taken: %v queued", queued)
	for i := range 10 {
		go upsert(fmt.Sprint("k", i))
	}
	require.Eventually(t, func() bool { queued[0] = len(s.jobs); return queued[0] == 10 },
		10*time.Second, time.Millisecond, "jobs queued %v, want 10", queued)
	for range 11 {
		assert.ErrorIs(t, <-errs, store.ErrUnavailable, "the lock is another's")
	}
	assert.Equal(t, uint64(2), s.begun.Load()-begun, "transactions begun: the first write's, then the batch's")
}

// A batch that failed as a whole runs its jobs again one by one; when the
// first of those cannot begin (another process took the lock as the batch
// rolled back), the rest get that failure at once. Each waited the busy
// timeout again for the same lock: up to 128 jobs, 10 minutes at the
// default 5s, with every write of the process waiting behind them.
func TestJobsRunAgainAloneStopAtALockHeldByAnother(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "o.db")
	s, err := Open(ctx, Config{Path: path, BusyTimeout: 100 * time.Millisecond})
	require.NoError(t, err)
	defer s.Close()
	aborted, taken := make(chan struct{}), make(chan struct{})
	testHookBatchAborted = func() { close(aborted); <-taken }
	defer func() { testHookBatchAborted = nil }()

	// Hold the writer, so that the jobs below are taken as one batch.
	started, release := make(chan struct{}), make(chan struct{})
	go s.submit(ctx, func(*txn) error { close(started); <-release; return nil })
	<-started
	queued := []int{0} // the last count seen, for the failure message
	waitQueued := func(n int) {
		require.Eventually(t, func() bool { queued[0] = len(s.jobs); return queued[0] == n },
			10*time.Second, time.Millisecond, "jobs queued %v, want %d", queued, n)
	}
	errs := make(chan error, 11)
	for i := range 10 {
		go func() {
			_, err := s.Upsert(ctx, "inbound", fmt.Sprint("k", i), []byte(`{}`))
			errs <- err
		}()
	}
	waitQueued(10)
	go func() { errs <- s.submit(ctx, func(*txn) error { return &txError{"transaction lost"} }) }()
	waitQueued(11)
	begun := s.begun.Load()
	close(release)

	select {
	case <-aborted:
	case <-time.After(30 * time.Second):
		t.Fatal("the batch did not fail within 30s")
	}
	conn := storetest.HoldWriteLock(t, path) // another process, as the batch rolled back
	close(taken)
	for range 11 {
		assert.ErrorIs(t, <-errs, store.ErrUnavailable, "the lock is another's")
	}
	assert.Equal(t, uint64(2), s.begun.Load()-begun, "transactions begun: the batch's, then one job's alone, which could not begin")

	_, err = conn.ExecContext(ctx, `ROLLBACK`)
	require.NoError(t, err)
	_, err = s.Upsert(ctx, "inbound", "after", []byte(`{}`))
	require.NoError(t, err, "the lock let go: writes go on")
}

// A store closing with writes queued while another process holds the
// file's lock: once a batch of them cannot begin, the rest end at once
// with its failure. Each ran alone, waiting the busy timeout again for the
// same lock: a stop with 300 outcomes queued took 25 minutes at the
// default 5s. (Which of the queue and the stop the writer takes first is
// Go's draw: at worst it takes the queue a batch at a time first.)
func TestAStoreClosingBehindAnothersLockDoesNotWaitForItJobByJob(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "o.db")
	const queued, batch = 12, 2
	s, err := Open(ctx, Config{Path: path, BusyTimeout: 300 * time.Millisecond, MaxBatch: batch})
	require.NoError(t, err)
	conn := storetest.HoldWriteLock(t, path)
	defer conn.ExecContext(ctx, `ROLLBACK`)

	begun := s.begun.Load()
	errs := make(chan error, queued+1)
	upsert := func(key string) {
		_, err := s.Upsert(ctx, "inbound", key, []byte(`{}`))
		errs <- err
	}
	go upsert("first") // the writer waits at its BEGIN meanwhile
	n := []int{0}
	require.Eventually(t, func() bool { n[0] = len(s.jobs); return n[0] == 0 && s.begun.Load() > begun },
		10*time.Second, time.Millisecond, "the first write taken: %v queued", n)
	for i := range queued {
		go upsert(fmt.Sprint("k", i))
	}
	require.Eventually(t, func() bool { n[0] = len(s.jobs); return n[0] == queued },
		10*time.Second, time.Millisecond, "jobs queued %v, want %d", n, queued)
	require.NoError(t, s.Close())
	for range queued + 1 {
		assert.ErrorIs(t, <-errs, store.ErrUnavailable, "the lock is another's")
	}
	assert.LessOrEqual(t, s.begun.Load()-begun, uint64(1+queued/batch),
		"transactions begun: the first write's, and at most one a batch, never one a job")
}
