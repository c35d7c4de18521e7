package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/ordermail/ordermail/app"
	"github.com/ordermail/ordermail/fixtures"
	"github.com/ordermail/ordermail/internal/later"
	"github.com/ordermail/ordermail/internal/syncbuf"
	"github.com/ordermail/ordermail/mailer/mockmail"
	"github.com/ordermail/ordermail/order"
	"github.com/ordermail/ordermail/store"
	"github.com/ordermail/ordermail/store/couchbase"
	"github.com/ordermail/ordermail/store/couchbase/cbtest"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// proc is ordermail running as a process of its own.
type proc struct {
	cmd    *exec.Cmd
	logs   *syncbuf.Buffer // standard error
	out    *syncbuf.Buffer // standard output
	exited chan error
}

func startProc(t *testing.T, args ...string) *proc {
	t.Helper()
	return startProcEnv(t, nil, args...)
}

// startProcEnv is startProc with env (NAME=value) added to the test's
// environment.
func startProcEnv(t *testing.T, env []string, args ...string) *proc {
	t.Helper()
	p := &proc{cmd: exec.Command(binary, args...), logs: &syncbuf.Buffer{}, out: &syncbuf.Buffer{}, exited: make(chan error, 1)}
	if env != nil {
		p.cmd.Env = append(os.Environ(), env...)
	}
	p.cmd.Stderr, p.cmd.Stdout = p.logs, p.out
	require.NoError(t, p.cmd.Start())
	go func() { p.exited <- p.cmd.Wait() }()
	t.Cleanup(func() {
		if p.cmd.ProcessState == nil {
			p.cmd.Process.Kill()
			<-p.exited
		}
	})
	return p
}

// waitLog waits for a log line that contains every part.
func (p *proc) waitLog(t *testing.T, parts ...string) {
	t.Helper()
	require.Eventually(t, func() bool { return p.hasLog(parts...) }, 60*time.Second, 5*time.Millisecond,
		"no log line with %q in:\n%v", parts, later.Value(func() any { return p.logs.String() }))
}

func (p *proc) hasLog(parts ...string) bool { return len(p.logs.Lines(parts...)) > 0 }

// stop signals the process and waits for it to exit; it returns the exit
// error and how long the exit took.
func (p *proc) stop(t *testing.T, sig syscall.Signal) (error, time.Duration) {
	t.Helper()
	start := time.Now()
	if err := p.cmd.Process.Signal(sig); err != nil {
		// It exited by itself: say how, with its logs.
		t.Fatalf("signal %s: %v; it exited: %v; logs:\n%s", sig, err, <-p.exited, p.logs.String())
	}
	select {
	case err := <-p.exited:
		return err, time.Since(start)
	case <-time.After(60 * time.Second):
		t.Fatalf("no exit 60s after %s; logs:\n%s", sig, p.logs.String())
		return nil, 0
	}
}

// startMock runs `ordermail mockmail` on a free port and returns its URL.
func startMock(t *testing.T, args ...string) string {
	t.Helper()
	cmd := exec.Command(binary, append([]string{"mockmail", "--listen", "127.0.0.1:0", "--log-format", "json"}, args...)...)
	stderr, err := cmd.StderrPipe()
	require.NoError(t, err)
	require.NoError(t, cmd.Start())
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	addr := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			var line struct{ Msg, Addr, URL string }
			if json.Unmarshal(sc.Bytes(), &line) == nil && line.Msg == "mock email service listening" {
				if line.URL == "" {
					line.URL = "http://" + line.Addr
				}
				addr <- line.URL
			}
		}
	}()
	select {
	case u := <-addr:
		return u
	case <-time.After(30 * time.Second):
		t.Fatal("mockmail did not say where it listens")
		return ""
	}
}

func mockStats(t *testing.T, url string) mockmail.Stats {
	t.Helper()
	st, err := mockmail.FetchStats(context.Background(), url)
	require.NoError(t, err)
	return st
}

func openStore(t *testing.T, url string) store.Store {
	t.Helper()
	return openStoreConfig(t, app.StoreConfig{URL: url})
}

func openStoreConfig(t *testing.T, sc app.StoreConfig) store.Store {
	t.Helper()
	st, err := app.OpenStore(context.Background(), sc, slog.New(slog.NewTextHandler(io.Discard, nil)))
	require.NoError(t, err)
	t.Cleanup(func() { st.Close() })
	return st
}

// placeOrders writes orders as another process would: initiated, then paid.
func placeOrders(t *testing.T, st store.Store, docs []fixtures.Doc) {
	t.Helper()
	ctx := context.Background()
	for _, d := range docs {
		_, err := st.Upsert(ctx, order.Inbound, d.Key, d.Value)
		require.NoError(t, err)
		paid, err := order.SetPaymentStatus(d.Value, order.StatusPaid)
		require.NoError(t, err)
		_, err = st.Upsert(ctx, order.Inbound, d.Key, paid)
		require.NoError(t, err)
	}
}

// settled is a wait condition: an error reading the counts is "not yet".
func settled(t *testing.T, st store.Store, paid int) bool {
	return new(seenCounts).settled(t, st, paid)
}

// seenCounts keeps what a wait's condition last read of a store's counts,
// for the wait's failure message: later.Value(seen.Last). The condition
// runs in a goroutine of its own, hence the atomic.
type seenCounts struct{ last atomic.Pointer[string] }

// read reads the counts, and keeps them or the error.
func (s *seenCounts) read(st store.Store) (store.Counts, error) {
	c, err := st.Counts(context.Background())
	seen := fmt.Sprintf("paid %d, confirmed %d, retry docs %d, dead letters %d", c.OrdersPaid, c.OrdersConfirmed, c.RetryDocs, c.DeadLetters)
	if err != nil {
		seen = fmt.Sprintf("counts: %v", err)
	}
	s.last.Store(&seen)
	return c, err
}

// settled is settled, keeping what it read.
func (s *seenCounts) settled(t *testing.T, st store.Store, paid int) bool {
	c, err := s.read(st)
	if err != nil {
		t.Logf("counts: %v", err)
		return false
	}
	return c.OrdersPaid == paid && c.OrdersConfirmed == paid && c.RetryDocs == 0
}

// Last is what was read last.
func (s *seenCounts) Last() any {
	if p := s.last.Load(); p != nil {
		return *p
	}
	return "nothing read yet"
}

func envInt(t *testing.T, name string, def int) int {
	v := os.Getenv(name)
	if v == "" {
		return def
	}
	n, err := strconv.Atoi(v)
	require.NoError(t, err, name)
	return n
}

// runArgs runs the service against mailURL with short retry timings and no
// breaker, as the bench tests have none: against a mock failing a
// share of the sends at random, ten failures in a row (a few runs in a
// thousand) would hold every send for its 30s cooldown, past the waits.
func runArgs(storeURL, mailURL string, extra ...string) []string {
	return append([]string{"run", "--store", storeURL, "--mail-url", mailURL, "--log-format", "json",
		"--timer-interval", "100ms", "--retry-quantum", "200ms", "--backoff-min", "50ms", "--backoff-max", "500ms",
		"--max-attempts", "0", "--claim-ttl", "3s", "--mail-timeout", "2s", "--breaker-failures", "0"}, extra...)
}

// TestCrashKillRestart kills `ordermail run` with SIGKILL at random moments
// while orders keep arriving, restarts it each time, and checks that in the
// end every paid order is confirmed, no retry document is left, and no order
// was delivered twice. ORDERMAIL_CRASH_ORDERS, _KILLS and _SEED make it
// longer (scripts/crash-test.sh).
func TestCrashKillRestart(t *testing.T) {
	t.Run("embedded", func(t *testing.T) {
		crashKillRestart(t, app.StoreConfig{URL: "file:" + filepath.Join(t.TempDir(), "ordermail.db")}, nil,
			func(p *proc) bool { return p.hasLog(`"msg":"watching"`) })
	})
	t.Run("couchbase-3nodes", func(t *testing.T) {
		srv := cbtest.Start(t, cbtest.Options{Nodes: 3, VBuckets: 64})
		sc := app.StoreConfig{URL: srv.ConnStr(), Couchbase: couchbase.Config{
			Username: srv.Username(), Password: srv.Password(), Timeout: 5 * time.Second, CountsTTL: -1}}
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
		defer cancel()
		require.NoError(t, couchbase.Setup(ctx, sc.CouchbaseConfig(), couchbase.SetupOptions{}, slog.New(slog.NewTextHandler(io.Discard, nil))))
		// The shortest heartbeat TTL: each run takes the vBuckets over
		// from the one killed before it soon, and is killed streaming.
		crashKillRestart(t, sc, []string{"--cb-username", srv.Username(), "--cb-password", srv.Password(), "--cb-timeout", "5s",
			"--cb-member-ttl", "500ms"}, func(p *proc) bool {
			for _, l := range p.logs.Lines(`"msg":"rebalanced"`) {
				if !strings.Contains(l, `"claimed":0,`) {
					return true
				}
			}
			return false
		})
	})
}

// crashKillRestart: streaming says from a run's logs that it streams the
// feed; each run is killed a random moment after that.
func crashKillRestart(t *testing.T, sc app.StoreConfig, storeArgs []string, streaming func(*proc) bool) {
	orders := envInt(t, "ORDERMAIL_CRASH_ORDERS", 300)
	kills := envInt(t, "ORDERMAIL_CRASH_KILLS", 8)
	seed := uint64(envInt(t, "ORDERMAIL_CRASH_SEED", int(time.Now().UnixNano()%1e9)))
	t.Logf("crash test: %d orders, %d kills, seed %d", orders, kills, seed)
	rng := rand.New(rand.NewPCG(seed, seed))

	mock := startMock(t, "--fail-rate", "0.3", "--fail-status", "503", "--latency", "5ms", "--seed", "11")
	storeURL := sc.URL
	st := openStoreConfig(t, sc)
	_, err := st.Upsert(context.Background(), order.Retry, order.ControlKey, []byte(`{}`))
	require.NoError(t, err)

	// Orders arrive from this process in batches, half of each while the
	// service is down and half while it runs, a few at a time.
	docs := fixtures.Generate(orders, seed)
	batch := (orders + kills) / (kills + 1)
	placed := 0
	for k := 0; k <= kills; k++ {
		n := min(batch, orders-placed)
		placeOrders(t, st, docs[placed:placed+n/2])
		p := startProc(t, runArgs(storeURL, mock, storeArgs...)...)
		for i := placed + n/2; i < placed+n; i += 5 {
			placeOrders(t, st, docs[i:min(i+5, placed+n)])
			time.Sleep(time.Duration(rng.IntN(20)) * time.Millisecond) // spread over the run
		}
		placed += n
		if k == kills {
			require.Equal(t, orders, placed)
			var seen seenCounts
			require.Eventually(t, func() bool { return seen.settled(t, st, orders) }, 5*time.Minute, 50*time.Millisecond,
				"not settled: want %d paid, all confirmed, no retry docs; last: %v; logs of the last run:\n%v",
				orders, later.Value(seen.Last), later.Value(func() any { return p.logs.String() }))
			err, _ := p.stop(t, syscall.SIGTERM)
			require.NoError(t, err)
			break
		}
		// A random moment once it streams, not an outcome: the kill may
		// hit anything.
		require.Eventually(t, func() bool { return streaming(p) }, 2*time.Minute, 10*time.Millisecond,
			"run %d never streamed; logs:\n%v", k, later.Value(func() any { return p.logs.String() }))
		time.Sleep(time.Duration(50+rng.IntN(600)) * time.Millisecond)
		p.stop(t, syscall.SIGKILL)
	}

	ms := mockStats(t, mock)
	c, err := st.Counts(context.Background())
	require.NoError(t, err)
	summary := fmt.Sprintf("orders=%d confirmed=%d retryDocsLeft=%d kills=%d requests=%d deliveries=%d failures=%d duplicateRequests=%d duplicateDeliveries=%d",
		c.OrdersPaid, c.OrdersConfirmed, c.RetryDocs, kills, ms.Requests, ms.Deliveries, ms.Failures, ms.DuplicateRequests, ms.Deliveries-orders)
	t.Log(summary)
	fmt.Println("crash test ("+t.Name()+"):", summary)
	assert.Equal(t, orders, c.OrdersConfirmed)
	assert.Zero(t, c.RetryDocs)
	// Every order was delivered (it is confirmed only after a 200 for its
	// key) and the mock counts one delivery per key: as many deliveries as
	// orders means none was delivered twice.
	assert.Equal(t, orders, ms.Deliveries, "duplicate deliveries")
	assert.Equal(t, ms.Requests, ms.Deliveries+ms.Failures+ms.DuplicateRequests)
}

// TestStandbyTakesOver: a second run on the same file waits as a standby and
// takes over when the first dies; they never consume the feed together.
func TestStandbyTakesOver(t *testing.T) {
	mock := startMock(t, "--fail-rate", "0", "--latency", "20ms")
	storeURL := "file:" + filepath.Join(t.TempDir(), "ordermail.db")
	st := openStore(t, storeURL)

	first := startProc(t, runArgs(storeURL, mock)...)
	first.waitLog(t, `"msg":"watching"`)
	second := startProc(t, runArgs(storeURL, mock)...)
	second.waitLog(t, `"msg":"standby: another ordermail runs the feed of this store; waiting to take over"`)
	assert.False(t, second.hasLog(`"msg":"watching"`), "the standby does not read the feed")

	docs := fixtures.Generate(100, 3)
	placeOrders(t, st, docs)
	var seen seenCounts
	require.Eventually(t, func() bool {
		c, err := seen.read(st)
		return err == nil && c.OrdersConfirmed >= 20
	}, 60*time.Second, 5*time.Millisecond, "20 orders confirmed by the first run; last: %v; its logs:\n%v",
		later.Value(seen.Last), later.Value(func() any { return first.logs.String() }))
	first.stop(t, syscall.SIGKILL)

	second.waitLog(t, `"msg":"took over: this instance runs the feed now"`)
	second.waitLog(t, `"msg":"watching"`)
	require.Eventually(t, func() bool { return seen.settled(t, st, 100) }, 2*time.Minute, 20*time.Millisecond,
		"100 paid orders, all confirmed, no retry docs; last: %v; logs of the standby:\n%v",
		later.Value(seen.Last), later.Value(func() any { return second.logs.String() }))
	err, _ := second.stop(t, syscall.SIGTERM)
	require.NoError(t, err)
	ms := mockStats(t, mock)
	t.Logf("standby: mock %+v", ms)
	assert.Equal(t, 100, ms.Deliveries)
}

// TestGracefulShutdownUnderLoad: SIGTERM in a heavy run finishes in-flight
// sends within a bound, saves the checkpoint, and a restart neither loses nor
// repeats a delivery.
func TestGracefulShutdownUnderLoad(t *testing.T) {
	mock := startMock(t, "--fail-rate", "0.3", "--fail-status", "503", "--latency", "100ms")
	storeURL := "file:" + filepath.Join(t.TempDir(), "ordermail.db")
	st := openStore(t, storeURL)
	_, err := st.Upsert(context.Background(), order.Retry, order.ControlKey, []byte(`{}`))
	require.NoError(t, err)
	docs := fixtures.Generate(400, 5)
	placeOrders(t, st, docs)

	p := startProc(t, runArgs(storeURL, mock)...)
	var seen seenCounts
	require.Eventually(t, func() bool {
		c, err := seen.read(st)
		return err == nil && c.OrdersConfirmed >= 100
	}, 60*time.Second, 5*time.Millisecond, "100 orders confirmed before SIGTERM; last: %v; logs:\n%v",
		later.Value(seen.Last), later.Value(func() any { return p.logs.String() }))
	err, took := p.stop(t, syscall.SIGTERM)
	require.NoError(t, err, "clean exit; logs:\n%s", p.logs.String())
	// The bound: the mail timeout (2s) plus fx's margin; waited for above
	// with a deadline, reported here.
	t.Logf("SIGTERM under load: exited in %s", took.Round(time.Millisecond))
	fmt.Printf("graceful shutdown under load: exited %s after SIGTERM\n", took.Round(time.Millisecond))
	assert.False(t, p.hasLog("in-flight events did not finish in time"), "in-flight sends finished")
	assert.True(t, p.hasLog(`"msg":"stopped","component":"watcher"`))
	mid := mockStats(t, mock)

	again := startProc(t, runArgs(storeURL, mock)...)
	require.Eventually(t, func() bool { return seen.settled(t, st, 400) }, 2*time.Minute, 20*time.Millisecond,
		"400 paid orders, all confirmed, no retry docs after the restart; last: %v; logs of the restart:\n%v",
		later.Value(seen.Last), later.Value(func() any { return again.logs.String() }))
	err, _ = again.stop(t, syscall.SIGTERM)
	require.NoError(t, err)
	ms := mockStats(t, mock)
	t.Logf("at SIGTERM: %+v; at the end: %+v", mid, ms)
	assert.Equal(t, 400, ms.Deliveries, "nothing lost")
	assert.Zero(t, ms.DuplicateRequests, "nothing repeated")
}
