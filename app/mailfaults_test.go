package app_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ordermail/ordermail/internal/later"
	"github.com/ordermail/ordermail/mailer/mockmail"
	"github.com/ordermail/ordermail/order"
	"github.com/ordermail/ordermail/store"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// faultServer stands in front of the mock email service and misbehaves in
// the way its mode says.
type faultServer struct {
	mock    *mockmail.Server
	mode    atomic.Value  // string
	bursts  atomic.Int64  // 500s left to answer in mode "burst"
	faulted atomic.Int64  // requests that met a fault
	closed  chan struct{} // ends hanging requests when the test ends
}

func (f *faultServer) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	switch f.mode.Load() {
	case "hang":
		f.faulted.Add(1)
		// Read the body: only then does net/http watch the connection and
		// cancel the request when the client gives up.
		io.Copy(io.Discard, r.Body)
		select {
		case <-r.Context().Done():
		case <-f.closed:
		}
		return
	case "reset":
		f.faulted.Add(1)
		conn, _, err := w.(http.Hijacker).Hijack()
		if err != nil {
			panic(err)
		}
		conn.(*net.TCPConn).SetLinger(0) // close with RST
		conn.Close()
		return
	case "slow":
		select {
		case <-time.After(300 * time.Millisecond):
		case <-r.Context().Done():
			return
		}
	case "burst":
		if f.bursts.Add(-1) >= 0 {
			f.faulted.Add(1)
			http.Error(w, "burst", http.StatusInternalServerError)
			return
		}
	}
	f.mock.ServeHTTP(w, r)
}

// serve starts f on addr (127.0.0.1:0 for any port) and returns its URL.
func (f *faultServer) serve(t *testing.T, addr string) string {
	t.Helper()
	t.Cleanup(func() { close(f.closed) }) // runs after the server's cleanup below
	return serveOn(t, addr, f)
}

// serveOn serves h on addr until the test ends, and returns its URL.
func serveOn(t *testing.T, addr string, h http.Handler) string {
	t.Helper()
	ln, err := net.Listen("tcp", addr)
	require.NoError(t, err)
	srv := &http.Server{Handler: h}
	done := make(chan struct{})
	go func() { srv.Serve(ln); close(done) }()
	t.Cleanup(func() { srv.Close(); <-done })
	return "http://" + ln.Addr().String()
}

func newFaultRun(t *testing.T, mode string) (*run, *faultServer) {
	t.Helper()
	r := newScriptedRun(t, mockmail.Config{})
	f := &faultServer{mock: r.mock, closed: make(chan struct{})}
	f.mode.Store(mode)
	r.cfg.Mail.URL = f.serve(t, "127.0.0.1:0")
	r.cfg.Mail.Timeout = 200 * time.Millisecond
	return r, f
}

// TestEmailServiceFaults: under each fault, every send ends within the
// client timeout, the orders wait as retries instead of stalling the feed,
// and once the service behaves, the backlog drains with one delivery each.
func TestEmailServiceFaults(t *testing.T) {
	for _, mode := range []string{"hang", "reset", "burst"} {
		t.Run(mode, func(t *testing.T) {
			r, f := newFaultRun(t, mode)
			f.bursts.Store(60)
			a, st := r.start(t)
			defer stop(t, a)
			keys := r.placeOrders(t, st, 40)

			// Every order got its first attempt, failed, and waits as a retry:
			// none is stuck behind a call that does not answer.
			require.Eventually(t, func() bool {
				_, retries, ok := progress(t, st, keys)
				return ok && retries+r.mock.Stats().Deliveries >= 40 && f.faulted.Load() >= 40
			}, 30*time.Second, 10*time.Millisecond, "every order tried and waiting as a retry or delivered: %v", later.Value(func() any {
				_, retries, ok := progress(t, st, keys)
				return fmt.Sprintf("%d retry documents (read: %v), %d delivered, %d faulted", retries, ok, r.mock.Stats().Deliveries, f.faulted.Load())
			}))

			f.mode.Store("ok")
			waitConfirmed(t, st, keys)
			// The 200ms timeout the faults need stays: on a busy machine
			// an answer of the mended service can come after it, and the
			// order is sent again under its key, answered as a replay.
			assertOneDeliveryEach(t, r.mock, keys)
			t.Logf("%s: %d faulty answers, mock %+v", mode, f.faulted.Load(), r.mock.Stats())
		})
	}
}

func TestVerySlowAnswersWithinTheTimeout(t *testing.T) {
	r, _ := newFaultRun(t, "slow")
	r.cfg.Mail.Timeout = 5 * time.Second
	a, st := r.start(t)
	defer stop(t, a)
	keys := r.placeOrders(t, st, 40)
	waitConfirmed(t, st, keys)
	assert.Zero(t, r.mock.Stats().Failures, "slow is not failed")
	assertDeliveredOnce(t, r.mock, keys)
}

// TestOneHangingSendHoldsUpItsOrderOnly: the email service holds one
// request without an answer, far from the send timeout, while many more
// orders come than the workers hold queued (a queue per worker held 64:
// the reader then waited behind the hung send, and so did every worker).
// Every other order is confirmed meanwhile; once answered, the held one is
// too, each delivered once.
func TestOneHangingSendHoldsUpItsOrderOnly(t *testing.T) {
	for _, b := range backends[:2] { // the embedded store and the Couchbase test server
		t.Run(b.name, func(t *testing.T) { oneHangingSend(t, b) })
	}
}

// holdFirstRequest has the email service hold the first request it gets
// unanswered until release is sent to or closed, far within the send's
// timeout; held says which (its idempotency key) once it came.
func holdFirstRequest(t *testing.T, r *run) (held *atomic.Pointer[string], release chan struct{}) {
	r.cfg.Mail.Timeout = 10 * time.Minute
	r.cfg.Watcher.ClaimTTL = 11 * time.Minute
	held, release = &atomic.Pointer[string]{}, make(chan struct{})
	r.cfg.Mail.URL = serveOn(t, "127.0.0.1:0", http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		if key := req.Header.Get("Idempotency-Key"); held.CompareAndSwap(nil, &key) {
			select {
			case <-release:
			case <-req.Context().Done():
				return
			}
		}
		r.mock.ServeHTTP(w, req)
	}))
	return held, release
}

func oneHangingSend(t *testing.T, b backend) {
	r := newRunOn(t, b, mockmail.Config{})
	held, release := holdFirstRequest(t, r)
	a, st := r.start(t)
	defer stop(t, a)
	// Runs before the stop, which waits for the held send.
	defer close(release)
	// Well beyond the 64 events a worker's queue held.
	keys := r.placeOrders(t, st, 160*r.cfg.Watcher.Workers)
	others := len(keys) - 1
	if !assert.Eventually(t, func() bool { return r.mock.Stats().Deliveries >= others }, 60*time.Second, 20*time.Millisecond) {
		t.Fatalf("with one send held: %d of the other %d orders delivered", r.mock.Stats().Deliveries, others)
	}
	require.NotNil(t, held.Load())
	assert.Equal(t, others, r.mock.Stats().Deliveries, "the held order is not delivered while held")

	release <- struct{}{}
	waitConfirmed(t, st, keys)
	assertDeliveredOnce(t, r.mock, keys)
}

// TestAnOrderRewrittenWhileItsSendHangsHoldsUpNoOther: while the email
// service holds an order's request, the order system rewrites that order
// more often than the watcher holds events read and not handled (64 a
// worker). Each rewrite supersedes the one waiting before it, so the
// other orders are read and confirmed meanwhile; once answered, the held
// order is confirmed, delivered once.
func TestAnOrderRewrittenWhileItsSendHangsHoldsUpNoOther(t *testing.T) {
	for _, b := range backends[:2] { // the embedded store and the Couchbase test server
		t.Run(b.name, func(t *testing.T) { rewrittenWhileHung(t, b) })
	}
}

func rewrittenWhileHung(t *testing.T, b backend) {
	ctx := context.Background()
	r := newRunOn(t, b, mockmail.Config{})
	r.cfg.Watcher.Workers = 2 // 128 events held at most
	held, release := holdFirstRequest(t, r)
	a, st := r.start(t)
	defer stop(t, a)
	defer close(release) // before the stop, which waits for the held send

	prefix := r.prefix
	r.prefix += "hot_"
	hot := r.placeOrders(t, st, 1)[0]
	r.prefix = prefix
	require.Eventually(t, func() bool { return held.Load() != nil }, 60*time.Second, 10*time.Millisecond, "the hot order's request is held")
	// Four times what the watcher holds: a feed that skips versions
	// (Couchbase's, the embedded store's) still gives more than it holds.
	rewrites := 4 * 64 * r.cfg.Watcher.Workers
	for i := range rewrites {
		d, err := st.Get(ctx, order.Inbound, hot)
		require.NoError(t, err)
		var fields map[string]any
		require.NoError(t, json.Unmarshal(d.Value, &fields))
		fields["note"] = fmt.Sprint("rewrite ", i)
		v, err := json.Marshal(fields)
		require.NoError(t, err)
		_, err = st.Apply(ctx, []store.Write{{Op: store.OpReplace, Collection: order.Inbound, Key: hot, Value: v, CAS: d.CAS}})
		require.NoError(t, err, "rewrite %d", i)
	}
	keys := r.placeOrders(t, st, 10*r.cfg.Watcher.Workers)
	if !assert.Eventually(t, func() bool { return r.mock.Stats().Deliveries >= len(keys) }, 60*time.Second, 20*time.Millisecond) {
		t.Fatalf("with the hot order's send held: %d of the other %d orders delivered", r.mock.Stats().Deliveries, len(keys))
	}
	assert.Equal(t, len(keys), r.mock.Stats().Deliveries, "the held order is not delivered while held")

	release <- struct{}{}
	keys = append(keys, hot)
	waitConfirmed(t, st, keys)
	assertDeliveredOnce(t, r.mock, keys)
}

func TestEmailServiceDownAtStartup(t *testing.T) {
	r := newScriptedRun(t, mockmail.Config{})
	// An address where nothing listens yet.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	addr := ln.Addr().String()
	require.NoError(t, ln.Close())
	r.cfg.Mail.URL = "http://" + addr
	a, st := r.start(t)
	defer stop(t, a)
	keys := r.placeOrders(t, st, 30)
	require.Eventually(t, func() bool { _, retries, ok := progress(t, st, keys); return ok && retries == 30 },
		30*time.Second, 10*time.Millisecond, "connection refused: every order waits as a retry; retry documents: %v",
		later.Value(func() any { _, retries, _ := progress(t, st, keys); return retries }))

	f := &faultServer{mock: r.mock, closed: make(chan struct{})}
	f.mode.Store("ok")
	f.serve(t, addr) // the service comes up
	waitConfirmed(t, st, keys)
	assertDeliveredOnce(t, r.mock, keys)
}
