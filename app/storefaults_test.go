package app_test

import (
	"context"
	"database/sql"
	"errors"
	"log/slog"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/ordermail/ordermail/app"
	"github.com/ordermail/ordermail/mailer/mockmail"
	"github.com/ordermail/ordermail/store"
	"github.com/ordermail/ordermail/store/embedded"
	"github.com/ordermail/ordermail/watcher"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/fx"
)

// gate holds sends at the email service until it is opened, so that a test
// can put the store in trouble while outcomes are about to be written.
type gate struct {
	h       http.Handler
	open    chan struct{}
	waiting atomic.Int64
}

func (g *gate) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	g.waiting.Add(1)
	select {
	case <-g.open:
	case <-r.Context().Done():
		return
	}
	g.h.ServeHTTP(w, r)
}

// storeFaultRun is a run on an embedded store at dir, with a gated mock and
// the app's warnings kept.
func storeFaultRun(t *testing.T, dir string) (*run, *gate, *logBuffer) {
	t.Helper()
	r := newScriptedRun(t, mockmail.Config{})
	g := &gate{h: r.mock, open: make(chan struct{})}
	r.cfg.Mail.URL = serveOn(t, "127.0.0.1:0", g)
	r.cfg.Store.URL = "file:" + filepath.Join(dir, "ordermail.db")
	r.cfg.Store.Embedded.BusyTimeout = 50 * time.Millisecond
	logs := &logBuffer{}
	r.log = slog.New(slog.NewJSONHandler(logs, &slog.HandlerOptions{Level: slog.LevelWarn}))
	return r, g, logs
}

// startWithSendsHeld starts the app, places 20 orders and waits until a send
// is held at the gate: the moment to put the store in trouble.
func startWithSendsHeld(t *testing.T, r *run, g *gate) (*fx.App, store.Store, []string) {
	t.Helper()
	a, st := r.start(t)
	keys := r.placeOrders(t, st, 20)
	require.Eventually(t, func() bool { return g.waiting.Load() > 0 }, 10*time.Second, time.Millisecond)
	return a, st, keys
}

func dbPath(r *run) string { return strings.TrimPrefix(r.cfg.Store.URL, "file:") }

// lockStore takes the database's write lock from another connection, as
// another process writing would, until the returned func is called.
func lockStore(t *testing.T, path string) func() {
	t.Helper()
	// Waits its turn behind the service's own writes, as a real second writer would.
	db, err := sql.Open("sqlite", "file:"+path+"?_txlock=immediate&_pragma=busy_timeout(10000)")
	require.NoError(t, err)
	tx, err := db.Begin()
	require.NoError(t, err)
	_, err = tx.Exec(`CREATE TABLE IF NOT EXISTS intruder (x)`)
	require.NoError(t, err)
	return func() { require.NoError(t, tx.Rollback()); require.NoError(t, db.Close()) }
}

func waitLog(t *testing.T, logs *logBuffer, parts ...string) {
	t.Helper()
	require.Eventually(t, func() bool { return len(logs.Lines(parts...)) > 0 }, 30*time.Second, 10*time.Millisecond,
		"no log line with %q", parts)
}

func TestStoreLockedByAnotherWriterRecoversWithoutRestart(t *testing.T) {
	r, g, logs := storeFaultRun(t, t.TempDir())
	a, st, keys := startWithSendsHeld(t, r, g)
	defer stop(t, a)

	unlock := lockStore(t, dbPath(r))
	close(g.open) // the sends succeed; writing their outcomes meets the lock
	waitLog(t, logs, `"level":"WARN"`, "store unavailable", "database is locked", "retry_in")
	confirmedN, _, _ := progress(t, st, keys) // for the log: a read the lock fails says 0
	t.Logf("%d of 20 confirmed while the store was locked", confirmedN)
	unlock()

	waitConfirmed(t, st, keys)
	assertDeliveredOnce(t, r.mock, keys) // outcomes were retried, not sends
}

func TestStopWhileStoreLockedLosesNothing(t *testing.T) {
	r, g, logs := storeFaultRun(t, t.TempDir())
	a, st, keys := startWithSendsHeld(t, r, g)
	// A stop that runs out of time skips the hooks after it, the store's
	// Close among them: in a process the exit closes it.
	t.Cleanup(func() { st.Close() })
	unlock := lockStore(t, dbPath(r))
	close(g.open)
	waitLog(t, logs, "store unavailable", "database is locked")

	// Stopped with outcomes unwritten: they must not count as done.
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	err := a.Stop(ctx)
	cancel()
	t.Logf("stop while locked: %v", err)
	unlock()

	a2, st2 := r.start(t)
	defer stop(t, a2)
	waitConfirmed(t, st2, keys)
	// Sends whose outcome was lost are sent again with the same key: the
	// email service sees a duplicate request, never a second delivery.
	ms := r.mock.Stats()
	assert.Equal(t, len(keys), ms.Deliveries)
	assert.Len(t, r.mock.Delivered(), len(keys))
	t.Logf("mock after restart: %+v", ms)
}

// chattr sets or clears the immutable flag; false when this machine can't.
func chattr(t *testing.T, flag string, paths ...string) bool {
	t.Helper()
	out, err := exec.Command("chattr", append([]string{flag}, paths...)...).CombinedOutput()
	if err != nil {
		t.Logf("chattr %s: %v: %s", flag, err, out)
		return false
	}
	return true
}

func TestReadOnlyWALWhileRunningRecovers(t *testing.T) {
	r, g, logs := storeFaultRun(t, t.TempDir())
	a, st, keys := startWithSendsHeld(t, r, g)
	defer stop(t, a)
	wal := dbPath(r) + "-wal"
	if !chattr(t, "+i", wal) {
		close(g.open)
		t.Skip("chattr +i is not permitted here (needs root and a file system with the immutable flag)")
	}
	t.Cleanup(func() { chattr(t, "-i", wal) })
	close(g.open)
	waitLog(t, logs, "store unavailable", "disk I/O error")
	require.True(t, chattr(t, "-i", wal))

	waitConfirmed(t, st, keys)
	assertDeliveredOnce(t, r.mock, keys)
}

func TestReadOnlyFileFailsAtStartWithAClearError(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "ordermail.db")
	st, err := app.OpenStore(context.Background(), app.StoreConfig{URL: "file:" + path}, quiet)
	require.NoError(t, err)
	require.NoError(t, st.Close())
	if !chattr(t, "+i", path) {
		t.Skip("chattr +i is not permitted here (needs root and a file system with the immutable flag)")
	}
	t.Cleanup(func() { chattr(t, "-i", path) })
	_, err = app.OpenStore(context.Background(), app.StoreConfig{URL: "file:" + path}, quiet)
	require.Error(t, err)
	assert.Contains(t, err.Error(), path+" is read-only")
}

func TestFullDiskRecoversWithoutRestart(t *testing.T) {
	dir := t.TempDir()
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", dir).CombinedOutput(); err != nil {
		t.Skipf("cannot mount a small tmpfs to fill (needs root): %v: %s", err, out)
	}
	t.Cleanup(func() { exec.Command("umount", "-l", dir).Run() })
	r, g, logs := storeFaultRun(t, dir)
	a, st, keys := startWithSendsHeld(t, r, g)
	defer stop(t, a)

	filler := filepath.Join(dir, "filler")
	f, err := os.Create(filler)
	require.NoError(t, err)
	chunk := make([]byte, 64<<10)
	for {
		if _, err := f.Write(chunk); err != nil {
			require.True(t, errors.Is(err, syscall.ENOSPC), "filling: %v", err)
			break
		}
	}
	require.NoError(t, f.Close())
	close(g.open)
	waitLog(t, logs, "store unavailable", "database or disk is full")
	require.NoError(t, os.Remove(filler))

	waitConfirmed(t, st, keys)
	assertDeliveredOnce(t, r.mock, keys)
}

// failingFeed refuses the subscription: the watcher's start fails.
type failingFeed struct{ store.Store }

func (failingFeed) Subscribe(context.Context, string, []string, store.FeedOptions) (store.Subscription, error) {
	return nil, errors.New("subscribe refused (test)")
}

// A start that fails lets the store's process lock go (fx runs no stop
// hook for it): another service in the process, or after it, takes it.
func TestAFailedStartLetsTheLockGo(t *testing.T) {
	r := newRun(t, 0)
	a := app.New(context.Background(), r.cfg, r.log, fx.Decorate(func(st store.Store) store.Store { return failingFeed{st} }))
	require.NoError(t, a.Err())
	require.ErrorContains(t, a.Start(context.Background()), "subscribe refused")
	l := embedded.NewProcessLock(strings.TrimPrefix(r.cfg.Store.URL, "file:"))
	ok, err := l.TryLock()
	require.NoError(t, err)
	defer l.Unlock()
	assert.True(t, ok, "the failed start let the lock go")
}

// The lock file deleted under the instance that runs the feed: the
// standby, which then takes a lock on a new file, waits for that instance
// to notice and stop before it runs the feed; the two never run it at
// once (the standby started within half a second, the other stopped
// seconds later).
func TestALockFileDeletedNeverRunsTwoFeeds(t *testing.T) {
	r := newRun(t, 0)
	r.cfg.Mail.Timeout = time.Second // a short stop, and so a short wait
	var wA, wB *watcher.Watcher
	a, _ := r.start(t, &wA)
	b, st := r.start(t, &wB)
	defer stop(t, b)
	require.True(t, wA.Running())
	require.False(t, wB.Running(), "b is the standby")

	require.NoError(t, os.Remove(strings.TrimPrefix(r.cfg.Store.URL, "file:")+".lock"))
	stopped := make(chan error, 1)
	go func() {
		<-a.Wait() // a notices (exit code 3) and is stopped, as run does
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		stopped <- a.Stop(ctx)
	}()
	both := []bool{false}
	require.Eventually(t, func() bool {
		if wA.Running() && wB.Running() {
			both[0] = true
		}
		return wB.Running()
	}, 60*time.Second, time.Millisecond, "b took over")
	require.NoError(t, <-stopped)
	assert.False(t, both[0], "both ran the feed at once")

	keys := r.placeOrders(t, st, 20)
	waitConfirmed(t, st, keys)
}
