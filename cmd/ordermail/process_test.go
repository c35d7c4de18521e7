package main

import (
	"context"
	"encoding/json"
	"github.com/ordermail/ordermail/store/storetest"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/ordermail/ordermail/fixtures"
	"github.com/ordermail/ordermail/internal/later"
	"github.com/ordermail/ordermail/order"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	_ "modernc.org/sqlite"
)

// TestRunAsProcess runs `ordermail run` as a real process, configured by
// environment variables, feeds it orders that other processes (load, pay,
// retries start) write on the same file, and stops it with SIGTERM.
func TestRunAsProcess(t *testing.T) {
	mock := startMock(t, "--fail-rate", "0.3", "--fail-status", "503", "--seed", "9")
	dir := t.TempDir()
	storeURL := "file:" + filepath.Join(dir, "o.db")

	t.Setenv("ORDERMAIL_STORE", storeURL)
	t.Setenv("ORDERMAIL_MAIL_URL", mock)
	p := startProc(t, "run", "--timer-interval", "100ms", "--retry-quantum", "200ms", "--backoff-min", "50ms",
		"--log-format", "json", "--metrics-listen", "127.0.0.1:0")
	p.waitLog(t, `"msg":"watching"`)
	p.waitLog(t, `"msg":"serving metrics"`)
	var served struct{ Addr string }
	require.NoError(t, json.Unmarshal([]byte(p.logs.Lines(`"msg":"serving metrics"`)[0]), &served))

	orders := filepath.Join(dir, "orders.jsonl")
	docs := fixtures.Generate(30, 5)
	writeJSONL(t, orders, docs)
	for _, args := range [][]string{
		{"load", "--collection", "inbound", orders},
		append([]string{"pay"}, keysOf(docs)...),
		{"retries", "start"},
	} {
		out, err := runBinary(args...)
		require.NoError(t, err, "%v: %s", args, out)
	}

	st := openStore(t, storeURL)
	var seen seenCounts
	require.Eventually(t, func() bool { return seen.settled(t, st, 30) }, 60*time.Second, 20*time.Millisecond,
		"30 paid orders, all confirmed, no retry docs; last: %v; logs:\n%v",
		later.Value(seen.Last), later.Value(func() any { return p.logs.String() }))
	// The backlog gauges are refreshed off the scrape path, every few seconds.
	var lastScrape atomic.Value // what /metrics said last (or the error), for the message
	require.Eventually(t, func() bool {
		resp, err := http.Get("http://" + served.Addr + "/metrics")
		if err != nil {
			lastScrape.Store(err.Error())
			return false
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		lastScrape.Store(string(body))
		return strings.Contains(string(body), "\nordermail_orders_confirmed 30\n")
	}, 30*time.Second, 50*time.Millisecond, "no ordermail_orders_confirmed 30 in /metrics; last scrape:\n%v", later.Value(lastScrape.Load))
	err, _ := p.stop(t, syscall.SIGTERM)
	require.NoError(t, err, "clean exit after SIGTERM; logs:\n%s", p.logs.String())
	assert.True(t, p.hasLog(`"msg":"shutting down"`))
	assert.True(t, p.hasLog(`"msg":"stopped","component":"watcher"`))
	ms := mockStats(t, mock)
	assert.Equal(t, 30, ms.Deliveries)
	assert.Zero(t, ms.DuplicateRequests)
	_, err = st.Get(context.Background(), order.Retry, order.ControlKey)
	assert.NoError(t, err)
}

func keysOf(docs []fixtures.Doc) []string {
	keys := make([]string, len(docs))
	for i, d := range docs {
		keys[i] = d.Key
	}
	return keys
}

// TestRunExitsWhenItsFilesGo (finding 14): the store file, or the lock
// file, deleted under a running service is noticed within seconds, logged
// as an error, and run exits with code 3, saying why, instead of writing
// where nobody reads (or letting a second run start alongside).
func TestRunExitsWhenItsFilesGo(t *testing.T) {
	for _, gone := range []string{"o.db", "o.db.lock"} {
		t.Run(gone, func(t *testing.T) {
			mock := startMock(t)
			dir := t.TempDir()
			p := startProc(t, "run", "--store", "file:"+filepath.Join(dir, "o.db"), "--mail-url", mock, "--log-format", "json")
			p.waitLog(t, `"msg":"watching"`)
			require.NoError(t, os.Remove(filepath.Join(dir, gone)))
			select {
			case err := <-p.exited:
				var exit *exec.ExitError
				require.ErrorAs(t, err, &exit, "a non-zero exit")
				assert.Equal(t, 3, exit.ExitCode(), "README's exit code; logs:\n%s", p.logs.String())
				assert.True(t, p.hasLog(`"level":"ERROR"`), "logs:\n%s", p.logs.String())
				assert.True(t, p.hasLog("was deleted or replaced while running"), "the reason, on standard error; logs:\n%s", p.logs.String())
			case <-time.After(60 * time.Second):
				t.Fatalf("still running 60s after %s was deleted; logs:\n%s", gone, p.logs.String())
			}
		})
	}
}

// TestRunStopsWhileTheStoreOpens: SIGTERM while `run` waits for a Couchbase
// cluster that does not answer (up to three --cb-timeouts) stops it then,
// cleanly, as a container's stop expects; it used to be ignored until the
// open gave up.
func TestRunStopsWhileTheStoreOpens(t *testing.T) {
	t.Parallel()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	t.Cleanup(func() { ln.Close() })
	connected := make(chan struct{}, 1)
	go func() { // accepts and never answers: a node that hangs
		var conns []net.Conn
		defer func() {
			for _, c := range conns {
				c.Close()
			}
		}()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			conns = append(conns, c)
			select {
			case connected <- struct{}{}:
			default:
			}
		}
	}()
	p := startProcEnv(t, []string{"ORDERMAIL_CB_PASSWORD=not-a-real-one"}, "run", "--store", "couchbase://"+ln.Addr().String(),
		"--cb-username", "ordermail", "--cb-timeout", "20s", "--mail-url", "http://127.0.0.1:9")
	select {
	case <-connected:
	case err := <-p.exited:
		t.Fatalf("run exited before it connected: %v; logs:\n%s", err, p.logs.String())
	case <-time.After(time.Minute):
		t.Fatalf("run did not connect to the node within a minute; logs:\n%s", p.logs.String())
	}
	err, _ = p.stop(t, syscall.SIGTERM)
	require.NoError(t, err, "a clean exit while the store opened; logs:\n%s", p.logs.String())
	assert.True(t, p.hasLog("stopped before the service started"), p.logs.String())
}

// TestRunWaitsForAStoreBusyWithAnotherWrite: a store whose write lock
// another process holds longer than the busy timeout (a sqlite3 session
// left in a transaction, a backup) is waited for at start, with a warning
// at each try, as a running service waits it out: `run` exited 1 with
// "database is locked". A stop asked for meanwhile ends the wait cleanly.
func TestRunWaitsForAStoreBusyWithAnotherWrite(t *testing.T) {
	t.Parallel()
	path := sampleStore(t, false)
	conn := storetest.HoldWriteLock(t, path)

	args := []string{"run", "--store", "file:" + path, "--mail-url", startMock(t), "--metrics-listen", "127.0.0.1:0"}
	p := startProc(t, args...)
	p.waitLog(t, "the store is busy with another process's write; trying again")
	err, _ := p.stop(t, syscall.SIGTERM)
	require.NoError(t, err, "a clean exit while it waited; logs:\n%s", p.logs.String())
	assert.True(t, p.hasLog("stopped before the service started"), p.logs.String())

	p = startProc(t, args...)
	p.waitLog(t, "the store is busy with another process's write; trying again")
	_, err = conn.ExecContext(context.Background(), "ROLLBACK")
	require.NoError(t, err)
	p.waitLog(t, "ordermail running")
	err, _ = p.stop(t, syscall.SIGTERM)
	require.NoError(t, err, "logs:\n%s", p.logs.String())
}

// TestRunStopsCleanlyWhenSignalledWhileStarting: SIGTERM while the start
// hooks run (here the feed waits for the store's write lock) stops the
// service once started, and exits 0: the start was cut short by the
// signal's context, rolled back with it (which runs no stop hook: the
// listeners, the store, a Couchbase member's leave), and exited 1.
func TestRunStopsCleanlyWhenSignalledWhileStarting(t *testing.T) {
	t.Parallel()
	path := sampleStore(t, false)
	release := holdLockFile(t, path+".writelock") // the feed's start waits for it

	p := startProc(t, "run", "--store", "file:"+path, "--mail-url", startMock(t), "--metrics-listen", "127.0.0.1:0", "--log-level", "debug")
	p.waitLog(t, "OnStart hook executing", "runner).start") // the feed's start, held by the lock
	require.NoError(t, p.cmd.Process.Signal(syscall.SIGTERM))
	p.waitLog(t, "stop asked for while starting: stopping once started")
	release()
	select {
	case err := <-p.exited:
		require.NoError(t, err, "a clean exit; logs:\n%s", p.logs.String())
	case <-time.After(60 * time.Second):
		t.Fatalf("no exit 60s after SIGTERM; logs:\n%s", p.logs.String())
	}
	// Started, then stopped as any running service is: its stop hooks ran.
	assert.True(t, p.hasLog("shutting down"), p.logs.String())
	assert.True(t, p.hasLog("stopped", "component=watcher"), p.logs.String())
}

// TestAStopThatRunsOutOfTimeSaysWhatWasStopping: another process holds the
// store's write lock while sends are in flight, so that no outcome, no
// checkpoint and no close can finish: the stop runs out of its time, and
// says which part was still stopping (it said only "context deadline
// exceeded").
func TestAStopThatRunsOutOfTimeSaysWhatWasStopping(t *testing.T) {
	t.Parallel()
	path := sampleStore(t, true)
	mail, arrived := silentMail(t)
	p := startProc(t, "run", "--store", "file:"+path, "--mail-url", mail, "--mail-timeout", "5s", "--breaker-failures", "0")
	waitFor(t, p, arrived, "no send came")

	conn := storetest.HoldWriteLock(t, path) // no outcome can be written
	err, _ := p.stop(t, syscall.SIGTERM)
	_, _ = conn.ExecContext(context.Background(), "ROLLBACK")
	require.Error(t, err, "the stop ran out of time; logs:\n%s", p.logs.String())
	assert.Regexp(t, `ordermail: stop: context deadline exceeded while stopping [\w./()*]+ \(a stop has 11.25s: --mail-timeout × 5/4 \+ 5s\)`, p.logs.String())
}

// silentMail is an email service that answers nothing until the client
// gives up (its --mail-timeout); arrived is closed when the first send has
// come, so that a test knows sends are in flight, whatever the machine.
func silentMail(t *testing.T) (url string, arrived <-chan struct{}) {
	t.Helper()
	came, done := make(chan struct{}), make(chan struct{})
	var once sync.Once
	mail := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body) // read whole, so that a client gone ends r's context
		once.Do(func() { close(came) })
		select {
		case <-r.Context().Done():
		case <-done:
		}
	}))
	t.Cleanup(mail.Close)
	t.Cleanup(func() { close(done) }) // first
	return mail.URL, came
}

// waitFor waits for c to be closed, or fails with why and p's logs.
func waitFor(t *testing.T, p *proc, c <-chan struct{}, why string) {
	t.Helper()
	select {
	case <-c:
	case <-time.After(time.Minute):
		t.Fatalf("%s; logs:\n%s", why, p.logs.String())
	}
}

// TestTheSameSignalTwiceStopsCleanly: a SIGTERM delivered twice at once (a
// wrapper passing on what its process group got too) is one stop, not a
// second signal that ends the process at once; one that comes later, while
// the stop still waits, does end it.
func TestTheSameSignalTwiceStopsCleanly(t *testing.T) {
	t.Parallel()
	// start runs the service on a store of paid orders, whose sends are in
	// flight, and unanswered, when it returns: its stop waits for them.
	start := func(mailTimeout, window string) *proc {
		mail, arrived := silentMail(t)
		p := startProcEnv(t, []string{"ORDERMAIL_SIGNAL_WINDOW=" + window}, "run", "--store", "file:"+sampleStore(t, true), "--mail-url", mail,
			"--mail-timeout", mailTimeout, "--breaker-failures", "0")
		waitFor(t, p, arrived, "no send came")
		return p
	}

	p := start("3s", "10m") // however slow the machine, the second comes within it
	require.NoError(t, p.cmd.Process.Signal(syscall.SIGTERM))
	p.waitLog(t, "shutting down") // the first taken: the same signal once more
	err, _ := p.stop(t, syscall.SIGTERM)
	require.NoError(t, err, "a clean stop; logs:\n%s", p.logs.String())
	assert.Contains(t, p.logs.String(), "terminated again within 10m0s of the first: taken for the same one")

	p = start("30s", "0s") // no window: any signal after the first is a second
	require.NoError(t, p.cmd.Process.Signal(syscall.SIGTERM))
	p.waitLog(t, "shutting down") // the first taken
	err, took := p.stop(t, syscall.SIGTERM)
	var exit *exec.ExitError
	require.ErrorAs(t, err, &exit, "logs:\n%s", p.logs.String())
	status, _ := exit.Sys().(syscall.WaitStatus)
	assert.True(t, status.Signaled() && status.Signal() == syscall.SIGTERM, "ended by the second SIGTERM, after %v: %v; logs:\n%s", took, err, p.logs.String())
}

// sampleStore is a store file in a temporary directory holding the sample
// orders (fixtures/orders), paid with pay.
func sampleStore(t *testing.T, pay bool) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "o.db")
	args := []string{"load", "--store", "file:" + path, "--collection", "inbound"}
	if pay {
		args = append(args, "--pay")
	}
	_, err := runBinary(append(args, filepath.Join("..", "..", "fixtures", "orders"))...)
	require.NoError(t, err)
	return path
}

// TestAStartCutShortAfterASignalSaysSo: SIGTERM while a start hook waits
// on something that does not come (the store's write lock, held) gives
// the start a stop's time more, then gives up: fx then runs no stop hook,
// so the exit is a failure naming the part that had not started, not a
// clean stop.
func TestAStartCutShortAfterASignalSaysSo(t *testing.T) {
	t.Parallel()
	path := sampleStore(t, false)
	holdLockFile(t, path+".writelock")

	// A wait for the lock far longer than the stop's time, however late
	// the signal comes.
	p := startProc(t, "run", "--store", "file:"+path, "--store-busy-timeout", "10m", "--mail-url", startMock(t), "--mail-timeout", "1s", "--log-level", "debug")
	p.waitLog(t, "OnStart hook executing", "runner).start")
	err, _ := p.stop(t, syscall.SIGTERM)
	require.Error(t, err, "logs:\n%s", p.logs.String())
	assert.Contains(t, p.logs.String(), "had not started a stop's time (6.25s) later: stopped without stopping the parts started", p.logs.String())
}

// holdLockFile locks the lock file at path, as another process would,
// until the test ends or release is called.
func holdLockFile(t *testing.T, path string) (release func()) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	require.NoError(t, err)
	t.Cleanup(func() { f.Close() })
	require.NoError(t, syscall.Flock(int(f.Fd()), syscall.LOCK_EX))
	return func() { require.NoError(t, syscall.Flock(int(f.Fd()), syscall.LOCK_UN)) }
}
