package embedded

import (
	"context"
	"fmt"
	"github.com/ordermail/ordermail/store/storetest"
	"os"
	"path/filepath"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/ordermail/ordermail/internal/later"
	"github.com/ordermail/ordermail/order"
	"github.com/ordermail/ordermail/store"
)

// probe runs fn on the writer goroutine, inside a write transaction.
func probe(t *testing.T, s *Store, fn func()) error {
	t.Helper()
	return s.submit(context.Background(), func(*txn) error { fn(); return nil })
}

// otherWriter opens the write lock file as another process would.
func otherWriter(t *testing.T, dbPath string) *os.File {
	t.Helper()
	f, err := os.OpenFile(dbPath+writeLockSuffix, os.O_RDWR, 0)
	require.NoError(t, err)
	t.Cleanup(func() { f.Close() })
	return f
}

// TestAWriteHoldsTheWriteLockFile: while a write transaction is open the
// lock file is taken, so that another process's writer waits in the kernel
// and is woken when it is let go, at the commit.
func TestAWriteHoldsTheWriteLockFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "o.db")
	s, err := Open(context.Background(), Config{Path: path})
	require.NoError(t, err)
	defer s.Close()
	other := otherWriter(t, path)

	var during error
	require.NoError(t, probe(t, s, func() { during = flock(other, syscall.LOCK_EX|syscall.LOCK_NB) }))
	assert.ErrorIs(t, during, syscall.EWOULDBLOCK, "taken during the transaction")
	require.NoError(t, flock(other, syscall.LOCK_EX|syscall.LOCK_NB), "let go at the commit")
}

// TestAWriteGoesOnPastAHeldWriteLockFile: a lock file held longer than the
// busy timeout (a process stopped in a write) does not stop the writes,
// which SQLite's lock alone then guards; one wait at most is left in the
// kernel, and the lock is used again once it is let go.
func TestAWriteGoesOnPastAHeldWriteLockFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "o.db")
	s, err := Open(context.Background(), Config{Path: path, BusyTimeout: 50 * time.Millisecond})
	require.NoError(t, err)
	defer s.Close()
	other := otherWriter(t, path)
	require.NoError(t, flock(other, syscall.LOCK_EX))

	var held, stuck bool
	look := func() { held, stuck = s.wlock.held != nil, s.wlock.stuck != nil }
	require.NoError(t, probe(t, s, look), "the write goes on past the busy timeout")
	assert.False(t, held)
	assert.True(t, stuck, "the wait given up on is still in the kernel")
	first := s.wlock.stuck
	require.NoError(t, probe(t, s, look))
	assert.False(t, held)
	assert.True(t, stuck)
	assert.Equal(t, first, s.wlock.stuck, "no second wait while the first is left")

	require.NoError(t, flock(other, syscall.LOCK_UN))
	require.Eventually(t, func() bool {
		return probe(t, s, look) == nil && held
	}, 30*time.Second, 5*time.Millisecond, "the lock is used again once let go")
	assert.False(t, stuck)
}

// TestAFullQueueLetsTheStoresLockBeTaken: with the writer held up (another
// process holds SQLite's write lock) and its queue full, the writes waiting
// to be queued hold nothing the writer needs: Close, Subscribe or a lost
// file's check can take the store's lock, and the writer drains the queue
// once the other process lets go. (They waited holding it for reading; a
// writer of it waiting behind them kept the writer from reading it, and
// every write hung.)
func TestAFullQueueLetsTheStoresLockBeTaken(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "o.db")
	s, err := Open(ctx, Config{Path: path, BusyTimeout: time.Minute})
	require.NoError(t, err)
	t.Cleanup(func() { s.Close() })
	conn := storetest.HoldWriteLock(t, path)

	n := cap(s.jobs) + 200 // the queue full, and more waiting to be queued
	var done atomic.Int64
	for i := range n {
		go func() {
			s.Upsert(store.WithSharedCommit(ctx), order.Inbound, fmt.Sprint("k", i), []byte(`{}`))
			done.Add(1)
		}()
	}
	require.Eventually(t, func() bool { return len(s.jobs) == cap(s.jobs) }, 30*time.Second, time.Millisecond, "the queue never filled")
	locked := make(chan struct{})
	go func() {
		s.mu.Lock() // as Close, Subscribe or checkFile take it
		s.mu.Unlock()
		close(locked)
	}()
	select {
	case <-locked:
	case <-time.After(30 * time.Second):
		t.Fatal("the store's lock was never taken: the writes waiting to be queued hold it")
	}
	_, err = conn.ExecContext(ctx, `ROLLBACK`) // the other process lets go
	require.NoError(t, err)
	require.Eventually(t, func() bool { return done.Load() == int64(n) }, 60*time.Second, 5*time.Millisecond,
		"writes done: %v of %d", later.Value(func() any { return done.Load() }), n)
}

// An open that finds the store's write lock held past the busy timeout
// says the store is busy (ErrBusy, which the service waits out at start),
// and unavailable, as every fault that may clear is.
func TestAnOpenBehindAnotherWriteIsBusy(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "o.db")
	s, err := Open(ctx, Config{Path: path})
	require.NoError(t, err)
	require.NoError(t, s.Close())
	storetest.HoldWriteLock(t, path)

	_, err = Open(ctx, Config{Path: path, BusyTimeout: 50 * time.Millisecond})
	require.ErrorIs(t, err, ErrBusy)
	require.ErrorIs(t, err, store.ErrUnavailable)
	require.ErrorIs(t, err, store.ErrUnreachable, "the whole store's, not one key's")
}
