package watcher_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ordermail/ordermail/internal/later"
	"github.com/ordermail/ordermail/internal/syncbuf"
	"github.com/ordermail/ordermail/mailer"
	"github.com/ordermail/ordermail/mailer/mockmail"
	"github.com/ordermail/ordermail/order"
	"github.com/ordermail/ordermail/store"
	"github.com/ordermail/ordermail/store/embedded"
	"github.com/ordermail/ordermail/watcher"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

var (
	pinned = time.Date(2026, 11, 21, 12, 0, 0, 0, time.UTC)
	quiet  = slog.New(slog.NewTextHandler(io.Discard, nil))
	// noJitter makes next attempt times exact.
	noJitter = order.Policy{Backoff: order.BackoffExponential, MinDelay: time.Second, MaxDelay: time.Minute, MaxAttempts: 5, Quantum: 15 * time.Second}
)

type syncBuffer = syncbuf.Buffer

type env struct {
	store *embedded.Store
	mock  *mockmail.Server
	mail  *mailer.Client
	w     *watcher.Watcher
}

// start starts the watcher; tests write their documents first, so that what
// the watcher sees does not depend on how fast it reads.
func (e *env) start(t *testing.T) {
	e.w = startWatcher(t, e.store, e.mail, &syncBuffer{})
}

func newEnv(t *testing.T, mockCfg mockmail.Config) *env {
	t.Helper()
	st, err := embedded.Open(context.Background(), embedded.Config{Path: filepath.Join(t.TempDir(), "o.db")})
	require.NoError(t, err)
	t.Cleanup(func() { st.Close() })
	m, err := mockmail.New(mockCfg)
	require.NoError(t, err)
	srv := httptest.NewServer(m)
	t.Cleanup(srv.Close)
	c, err := mailer.New(mailer.Config{URL: srv.URL, Timeout: 5 * time.Second}, quiet)
	require.NoError(t, err)
	return &env{store: st, mock: m, mail: c}
}

func startWatcher(t *testing.T, st store.Store, s watcher.Sender, logs *syncBuffer) *watcher.Watcher {
	t.Helper()
	log := slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	w, err := watcher.New(watcher.Config{Workers: 4, Policy: noJitter}, st, s, log, func() time.Time { return pinned })
	require.NoError(t, err)
	require.NoError(t, w.Start(context.Background()))
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		assert.NoError(t, w.Stop(ctx))
	})
	return w
}

func put(t *testing.T, st store.Store, coll, key, value string) {
	t.Helper()
	_, err := st.Upsert(context.Background(), coll, key, []byte(value))
	require.NoError(t, err)
}

func get(t *testing.T, st store.Store, coll, key string) (string, bool) {
	t.Helper()
	d, err := st.Get(context.Background(), coll, key)
	if err != nil {
		if !errors.Is(err, store.ErrNotFound) { // polled by Eventually: no require here
			t.Logf("get %s/%s: %v", coll, key, err)
		}
		return "", false
	}
	return string(d.Value), true
}

// mustDeadLetter reads the dead letter of key, which must be there.
func mustDeadLetter(t *testing.T, st store.Store, key string) order.DeadLetterDoc {
	t.Helper()
	v, ok := get(t, st, order.DeadLetter, key)
	require.True(t, ok, "no dead letter for %s", key)
	d, err := order.DecodeDeadLetter([]byte(v))
	require.NoError(t, err)
	return d
}

// recvWithin waits for c, failing with what after a generous deadline.
func recvWithin(t *testing.T, c <-chan struct{}, what string) {
	t.Helper()
	select {
	case <-c:
	case <-time.After(60 * time.Second):
		t.Fatal(what)
	}
}

func waitHandled(t *testing.T, w *watcher.Watcher, n int64) {
	t.Helper()
	require.Eventually(t, func() bool { return w.Stats().Handled >= n }, 10*time.Second, 5*time.Millisecond,
		"handled %v events, want %d", later.Value(func() any { return w.Stats().Handled }), n)
}

const paidOrder = `{"email":"ann@example.com","paymentStatus":"paid","confirmationEmailSent":false,"items":[{"name":"Swedish Meatballs 500g","amount":2,"unitPrice":9.95}]}`

// An order written back paid without its mark after it was confirmed (an
// order system saving a copy it read before the send) is marked again, not
// mailed again: its attempt record says its confirmation went out under
// this very order's key. The email service is not asked at all, so no
// retention of its idempotency keys is relied on.
func TestAConfirmedOrderWrittenBackWithoutItsMarkIsNotMailedAgain(t *testing.T) {
	e := newEnv(t, mockmail.Config{})
	put(t, e.store, order.Inbound, "order_1", paidOrder)
	e.start(t)
	waitHandled(t, e.w, 2)
	v, _ := get(t, e.store, order.Inbound, "order_1")
	require.Contains(t, v, `"confirmationEmailSent":true`)

	put(t, e.store, order.Inbound, "order_1", paidOrder) // the stale copy
	waitHandled(t, e.w, 4)                               // it, and the mark written again
	v, _ = get(t, e.store, order.Inbound, "order_1")
	assert.Contains(t, v, `"confirmationEmailSent":true`)
	assert.Equal(t, mockmail.Stats{Requests: 1, Deliveries: 1}, e.mock.Stats(), "one request in all")

	// Deleted and created again, it is another order: mailed.
	require.NoError(t, e.store.Remove(context.Background(), order.Inbound, "order_1", 0))
	put(t, e.store, order.Inbound, "order_1", paidOrder)
	require.Eventually(t, func() bool { return e.mock.Stats().Deliveries == 2 }, 30*time.Second, 5*time.Millisecond,
		"the order created again was not mailed: %v", later.Value(func() any { return e.mock.Stats() }))
}

func TestFirstSendSuccessMarksOrder(t *testing.T) {
	e := newEnv(t, mockmail.Config{})
	put(t, e.store, order.Inbound, "order_1", paidOrder)

	// insert (send) + our own confirmed write (ignored)
	e.start(t)
	waitHandled(t, e.w, 2)
	v, _ := get(t, e.store, order.Inbound, "order_1")
	assert.JSONEq(t, `{"email":"ann@example.com","paymentStatus":"paid","confirmationEmailSent":true,"items":[{"name":"Swedish Meatballs 500g","amount":2,"unitPrice":9.95}]}`, v,
		"only the flag changes")
	_, hasRetry := get(t, e.store, order.Retry, "order_1")
	assert.False(t, hasRetry)
	assert.Equal(t, mockmail.Stats{Requests: 1, Deliveries: 1}, e.mock.Stats(), "our own write sent nothing")
	assert.Equal(t, map[string]int{"confirmation:order_1@1": 1}, e.mock.Delivered(), "the key names the order and its incarnation")
}

func TestFirstSendFailureWritesRetryDoc(t *testing.T) {
	e := newEnv(t, mockmail.Config{FailRate: 1, FailStatus: 503})
	put(t, e.store, order.Inbound, "order_2", paidOrder)

	e.start(t)
	waitHandled(t, e.w, 2) // insert (send fails) + our own retry document (ignored)
	v, ok := get(t, e.store, order.Retry, "order_2")
	require.True(t, ok)
	ms := pinned.UnixMilli()
	assert.JSONEq(t, fmt.Sprintf(`{"type":"confirmation","docId":"order_2","attempt":1,"ts":%d,"fireRetry":false,
		"firstAttemptAt":%d,"nextAttemptAt":%d,"lastStatus":503,"idempotencyKey":"confirmation:order_2@1",
		"lastError":"answered 503 Service Unavailable (application/json, 32 bytes)"}`,
		ms, ms, ms+1000), v, "what the service answered is kept, not its body")
	o, _ := get(t, e.store, order.Inbound, "order_2")
	assert.Contains(t, o, `"confirmationEmailSent":false`)
	assert.Equal(t, 1, e.mock.Stats().Requests)
}

func TestFlaggedRetrySuccessDeletesRetryDoc(t *testing.T) {
	e := newEnv(t, mockmail.Config{})
	put(t, e.store, order.Inbound, "order_3", paidOrder)
	put(t, e.store, order.Retry, "order_3", `{"type":"confirmation","docId":"order_3","attempt":3,"ts":1,"fireRetry":true}`)
	// The order event sees the retry document and leaves the send to it.
	e.start(t)
	waitHandled(t, e.w, 4) // order, retry, confirmed write, retry deletion
	o, _ := get(t, e.store, order.Inbound, "order_3")
	assert.Contains(t, o, `"confirmationEmailSent":true`)
	_, ok := get(t, e.store, order.Retry, "order_3")
	assert.False(t, ok)
	assert.Equal(t, 1, e.mock.Stats().Requests)
}

func TestFlaggedRetryFailureCountsAttempt(t *testing.T) {
	e := newEnv(t, mockmail.Config{FailRate: 1, FailStatus: 503})
	put(t, e.store, order.Inbound, "order_4", paidOrder)
	put(t, e.store, order.Retry, "order_4", `{"type":"confirmation","docId":"order_4","attempt":3,"ts":1,"fireRetry":true}`)
	e.start(t)
	waitHandled(t, e.w, 3) // order (ignored), retry (fails), our own update (ignored)
	v, _ := get(t, e.store, order.Retry, "order_4")
	r, err := order.DecodeRetryDoc([]byte(v))
	require.NoError(t, err)
	assert.Equal(t, order.RetryDoc{Type: "confirmation", DocID: "order_4", Attempt: 4, TS: pinned.UnixMilli(),
		NextAttemptAt: pinned.Add(8 * time.Second).UnixMilli(), FirstAttemptAt: 1, LastStatus: 503,
		LastError: r.LastError, IdempotencyKey: "confirmation:order_4@1"}, r, "attempt 4 waits 1s doubled three times")
	assert.Equal(t, 1, e.mock.Stats().Requests, "the update of the retry document sent nothing")
}

func TestRetryForConfirmedOrderIsDropped(t *testing.T) {
	e := newEnv(t, mockmail.Config{})
	put(t, e.store, order.Inbound, "order_5", `{"email":"x@example.com","paymentStatus":"paid","confirmationEmailSent":true}`)
	put(t, e.store, order.Retry, "order_5", `{"type":"confirmation","docId":"order_5","attempt":1,"ts":1,"fireRetry":true}`)
	e.start(t)
	waitHandled(t, e.w, 3)
	_, ok := get(t, e.store, order.Retry, "order_5")
	assert.False(t, ok)
	assert.Equal(t, 0, e.mock.Stats().Requests)
}

func TestMalformedDocumentsAreDeadLetteredAndFeedGoesOn(t *testing.T) {
	e := newEnv(t, mockmail.Config{})
	put(t, e.store, order.Inbound, "bad_json", `{"paymentStatus":"paid"`)
	put(t, e.store, order.Inbound, "bad_array", `["paid"]`)
	put(t, e.store, order.Inbound, "bad_types", `{"paymentStatus":"paid","confirmationEmailSent":"no"}`)
	put(t, e.store, order.Inbound, "no_email", `{"paymentStatus":"paid"}`)
	put(t, e.store, order.Retry, "bad_retry", `{"attempt":1}`)
	put(t, e.store, order.Inbound, "good", paidOrder)
	logs := &syncBuffer{}
	w := startWatcher(t, e.store, e.mail, logs)

	waitHandled(t, w, 8) // 6 documents, the confirmation, the bad retry's deletion
	o, _ := get(t, e.store, order.Inbound, "good")
	assert.Contains(t, o, `"confirmationEmailSent":true`)
	assert.Equal(t, int64(5), w.Stats().DeadLettered)
	for key, want := range map[string]string{
		"bad_json":  "malformed_order",
		"bad_array": "malformed_order",
		"bad_types": "malformed_order",
		"no_email":  "no_email",
		"bad_retry": "malformed_retry_document",
	} {
		d := mustDeadLetter(t, e.store, key)
		assert.Equal(t, want, d.Reason, key)
		assert.Equal(t, key, d.DocID)
	}
	_, ok := get(t, e.store, order.Retry, "bad_retry")
	assert.False(t, ok, "the unreadable retry document moved to the dead letters")
	out := logs.String()
	for _, want := range []string{
		`key=bad_json reason=malformed_order detail="malformed document: unexpected end of JSON input"`,
		`key=bad_array reason=malformed_order detail="malformed document: not a JSON object"`,
		`detail="malformed document: field confirmationEmailSent is a JSON string, want bool"`,
		`key=bad_retry reason=malformed_retry_document detail="malformed document: docId is missing or empty"`,
	} {
		assert.Contains(t, out, want)
	}
	assert.Equal(t, 1, e.mock.Stats().Requests)
}

func TestFixedOrderClearsItsDeadLetter(t *testing.T) {
	e := newEnv(t, mockmail.Config{})
	put(t, e.store, order.Inbound, "o", `{"paymentStatus":"paid"}`)
	e.start(t)
	waitHandled(t, e.w, 1)
	_, dead := get(t, e.store, order.DeadLetter, "o")
	require.True(t, dead)

	put(t, e.store, order.Inbound, "o", paidOrder) // the operator adds the address
	waitHandled(t, e.w, 3)
	o, _ := get(t, e.store, order.Inbound, "o")
	assert.Contains(t, o, `"confirmationEmailSent":true`)
	_, dead = get(t, e.store, order.DeadLetter, "o")
	assert.False(t, dead)
}

func TestDeadLetterBlocksReplayedFirstSend(t *testing.T) {
	e := newEnv(t, mockmail.Config{})
	put(t, e.store, order.DeadLetter, "o", `{"type":"confirmation","docId":"o","reason":"permanent_error","lastStatus":400,"attempts":1}`)
	put(t, e.store, order.Inbound, "o", paidOrder)
	e.start(t)
	waitHandled(t, e.w, 1)
	assert.Zero(t, e.mock.Stats().Requests, "a dead-lettered order waits for a redrive")
}

func TestRetryForMissingOrderIsDeadLettered(t *testing.T) {
	e := newEnv(t, mockmail.Config{})
	put(t, e.store, order.Retry, "gone", `{"type":"confirmation","docId":"gone","attempt":2,"ts":1,"fireRetry":true}`)
	e.start(t)
	waitHandled(t, e.w, 2)
	d := mustDeadLetter(t, e.store, "gone")
	assert.Equal(t, order.ReasonOrderMissing, d.Reason)
	assert.Equal(t, 2, d.Attempts)
	_, ok := get(t, e.store, order.Retry, "gone")
	assert.False(t, ok)
}

func TestPermanentFailureDeadLetters(t *testing.T) {
	e := newEnv(t, mockmail.Config{FailRate: 1, FailStatus: 400})
	put(t, e.store, order.Inbound, "o", paidOrder)
	e.start(t)
	waitHandled(t, e.w, 1)
	d := mustDeadLetter(t, e.store, "o")
	assert.Equal(t, order.DeadLetterDoc{Type: "confirmation", DocID: "o", Reason: order.ReasonPermanent, LastStatus: 400,
		LastError: d.LastError, Attempts: 1, FirstAttemptAt: pinned.UnixMilli(), LastAttemptAt: pinned.UnixMilli(),
		DeadAt: pinned.UnixMilli(), IdempotencyKey: "confirmation:o@1"}, d)
	assert.Contains(t, d.LastError, "400 Bad Request")
	_, ok := get(t, e.store, order.Retry, "o")
	assert.False(t, ok)
	o, _ := get(t, e.store, order.Inbound, "o")
	assert.Contains(t, o, `"confirmationEmailSent":false`, "left unconfirmed")
}

// hangingSender blocks every send until released or its context ends.
type hangingSender struct {
	started chan struct{}
	send    func(ctx context.Context) error
}

func (h *hangingSender) Send(ctx context.Context, _ string, _ []byte) error {
	h.started <- struct{}{}
	return h.send(ctx)
}

func TestStopAbortsHangingSendAndLeavesItForReplay(t *testing.T) {
	path := filepath.Join(t.TempDir(), "o.db")
	st, err := embedded.Open(context.Background(), embedded.Config{Path: path})
	require.NoError(t, err)
	t.Cleanup(func() { st.Close() })
	put(t, st, order.Inbound, "order_h", paidOrder)

	hang := &hangingSender{started: make(chan struct{}, 1), send: func(ctx context.Context) error {
		<-ctx.Done()
		return ctx.Err()
	}}
	log := slog.New(slog.NewTextHandler(&syncBuffer{}, nil))
	w, err := watcher.New(watcher.Config{}, st, hang, log, nil)
	require.NoError(t, err)
	require.NoError(t, w.Start(context.Background()))
	recvWithin(t, hang.started, "the send never started")
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	// Stop returns once its deadline aborts the send. Closing the feed
	// (saving its checkpoint, tidying) gets what is left of the deadline,
	// which a loaded machine may spend before it is done: no matter here,
	// as the event was not acknowledged and comes back either way. (This
	// asked for "flush feed", a message no code has given since the
	// flush's errors were named for what failed: it failed whenever the
	// close missed the deadline, as under load.)
	if err := w.Stop(ctx); err != nil {
		require.ErrorIs(t, err, context.DeadlineExceeded, "Stop failed otherwise than by the deadline")
		require.ErrorContains(t, err, "stop watcher: ", "only the feed's close may miss the deadline")
	}
	_, ok := get(t, st, order.Retry, "order_h")
	assert.False(t, ok, "an aborted send is not a failure to retry")

	// After a restart the event comes back and the send succeeds.
	ok200 := &hangingSender{started: make(chan struct{}, 1), send: func(context.Context) error { return nil }}
	w2 := startWatcher(t, st, ok200, &syncBuffer{})
	recvWithin(t, ok200.started, "the send never started after the restart")
	waitHandled(t, w2, 1)
	o, _ := get(t, st, order.Inbound, "order_h")
	assert.Contains(t, o, `"confirmationEmailSent":true`)
}

// barrierStore holds each watcher after its first read of the flagged retry
// document until both have read it, so that both try to claim it.
type barrierStore struct {
	store.Store
	key     string
	arrived sync.WaitGroup
	seen    sync.Map // watcher name -> struct{}
}

type watcherKey struct{}

func (b *barrierStore) Subscribe(ctx context.Context, name string, colls []string, opts store.FeedOptions) (store.Subscription, error) {
	return noSnapshots(b.Store.Subscribe(ctx, name, colls, opts))
}

func (b *barrierStore) State(ctx context.Context, key string) (store.State, error) {
	d, err := b.Store.State(ctx, key)
	if key == b.key && err == nil && strings.Contains(string(d.Retry.Value), `"fireRetry":true`) {
		if _, again := b.seen.LoadOrStore(ctx.Value(watcherKey{}), struct{}{}); !again {
			b.arrived.Done()
			b.arrived.Wait()
		}
	}
	return d, err
}

// named tags the contexts of one watcher's calls, for barrierStore.
type named struct {
	*barrierStore
	name string
}

func (n *named) State(ctx context.Context, key string) (store.State, error) {
	return n.barrierStore.State(context.WithValue(ctx, watcherKey{}, n.name), key)
}

func TestTwoInstancesSendARetryOnce(t *testing.T) {
	e := newEnv(t, mockmail.Config{})
	put(t, e.store, order.Inbound, "o", paidOrder)
	bs := &barrierStore{Store: e.store, key: "o"}
	bs.arrived.Add(2)
	var ws []*watcher.Watcher
	for _, name := range []string{"a", "b"} {
		// From now: each sees only the retry document's event below.
		cfg := watcher.Config{Workers: 2, FeedName: name, FromNow: true, Policy: noJitter}
		w, err := watcher.New(cfg, &named{bs, name}, e.mail, quiet, nil)
		require.NoError(t, err)
		require.NoError(t, w.Start(context.Background()))
		ws = append(ws, w)
	}
	t.Cleanup(func() {
		for _, w := range ws {
			assert.NoError(t, w.Stop(context.Background()))
		}
	})
	put(t, e.store, order.Retry, "o", `{"type":"confirmation","docId":"o","attempt":1,"ts":1,"fireRetry":true}`)
	require.Eventually(t, func() bool {
		_, hasRetry := get(t, e.store, order.Retry, "o")
		o, _ := get(t, e.store, order.Inbound, "o")
		return !hasRetry && strings.Contains(o, `"confirmationEmailSent":true`)
	}, 10*time.Second, 5*time.Millisecond)
	assert.Equal(t, 1, e.mock.Stats().Requests, "one instance won the claim")
}

// flakyGets fails the first n reads of key with an error the watcher does
// not know, as a store in trouble of an unforeseen kind would.
type flakyGets struct {
	store.Store
	key   string
	fails atomic.Int32
}

func (f *flakyGets) Subscribe(ctx context.Context, name string, colls []string, opts store.FeedOptions) (store.Subscription, error) {
	return noSnapshots(f.Store.Subscribe(ctx, name, colls, opts))
}

func (f *flakyGets) State(ctx context.Context, key string) (store.State, error) {
	if key == f.key && f.fails.Add(-1) >= 0 {
		return store.State{}, errors.New("something nobody planned for")
	}
	return f.Store.State(ctx, key)
}

func TestUnexpectedStoreErrorsAreRetriedNotSkipped(t *testing.T) {
	e := newEnv(t, mockmail.Config{})
	put(t, e.store, order.Inbound, "o", paidOrder)
	flaky := &flakyGets{Store: e.store, key: "o"}
	flaky.fails.Store(3) // fewer than MaxEventFailures
	logs := &syncBuffer{}
	w := startWatcher(t, flaky, e.mail, logs)
	waitHandled(t, w, 1)
	o, _ := get(t, e.store, order.Inbound, "o")
	assert.Contains(t, o, `"confirmationEmailSent":true`, "confirmed without a restart")
	assert.Len(t, logs.Lines("change not done; trying again", "something nobody planned for"), 3)
}

// downKeys fails the reads of some keys' state as the store being
// unavailable, as Couchbase does for the keys of a node that is down (until
// it is failed over), of a locked document, of a durable write under way.
type downKeys struct {
	store.Store
	down atomic.Bool
	keys map[string]bool
}

func (d *downKeys) Subscribe(ctx context.Context, name string, colls []string, opts store.FeedOptions) (store.Subscription, error) {
	sub, err := noSnapshots(d.Store.Subscribe(ctx, name, colls, opts))
	if err != nil {
		return nil, err
	}
	return partitioned{sub, d.keys}, nil // on a locus of their own: nothing else there answers for it
}

func (d *downKeys) State(ctx context.Context, key string) (store.State, error) {
	if d.keys[key] && d.down.Load() {
		return store.State{}, fmt.Errorf("%w: its node does not answer", store.ErrUnavailable)
	}
	return d.Store.State(ctx, key)
}

// runWith starts a watcher of cfg on st, quiet and on the pinned clock,
// stopped when the test ends.
func runWith(t *testing.T, st store.Store, s watcher.Sender, cfg watcher.Config) *watcher.Watcher {
	t.Helper()
	return runLoggedTo(t, st, s, cfg, quiet)
}

// runLogged is runWith, its log at debug level in the buffer it returns.
func runLogged(t *testing.T, st store.Store, s watcher.Sender, cfg watcher.Config) (*watcher.Watcher, *syncBuffer) {
	t.Helper()
	logs := &syncBuffer{}
	return runLoggedTo(t, st, s, cfg, slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))), logs
}

func runLoggedTo(t *testing.T, st store.Store, s watcher.Sender, cfg watcher.Config, log *slog.Logger) *watcher.Watcher {
	t.Helper()
	w, err := watcher.New(cfg, st, s, log, func() time.Time { return pinned })
	require.NoError(t, err)
	require.NoError(t, w.Start(context.Background()))
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		assert.NoError(t, w.Stop(ctx))
	})
	return w
}

// confirmedOnce says key's order was marked confirmed, sent once, and
// nothing was dead-lettered.
func confirmedOnce(t *testing.T, e *env, w *watcher.Watcher, key string) {
	t.Helper()
	waitHandled(t, w, 1)
	o, _ := get(t, e.store, order.Inbound, key)
	assert.Contains(t, o, `"confirmationEmailSent":true`)
	assert.Zero(t, w.Stats().DeadLettered)
	assert.Equal(t, 1, e.mock.Stats().Deliveries)
}

// putPaid writes n paid orders keyed prefix0, prefix1..., and marks their
// keys in mark when it is given.
func putPaid(t *testing.T, st store.Store, prefix string, n int, mark map[string]bool) {
	t.Helper()
	for i := range n {
		key := fmt.Sprint(prefix, i)
		if mark != nil {
			mark[key] = true
		}
		put(t, st, order.Inbound, key, paidOrder)
	}
}

// TestKeysTheStoreCannotReachHoldUpNoOther: a worker waited out an
// unavailable store itself, so as many keys on a node that is down as
// there are workers stopped every confirmation, those of nodes that
// answer too. They wait apart now, and are sent once the store answers.
func TestKeysTheStoreCannotReachHoldUpNoOther(t *testing.T) {
	e := newEnv(t, mockmail.Config{})
	d := &downKeys{Store: e.store, keys: map[string]bool{}}
	d.down.Store(true)
	putPaid(t, e.store, "down", 4, d.keys)
	putPaid(t, e.store, "up", 20, nil)
	w := runWith(t, d, e.mail, watcher.Config{Workers: 2, Policy: noJitter})
	require.Eventually(t, func() bool { return e.mock.Stats().Deliveries == 20 }, time.Minute, 10*time.Millisecond,
		"the orders the store reaches were not all sent: %v delivered", later.Value(func() any { return e.mock.Stats().Deliveries }))
	assert.Empty(t, w.Stalled())
	assert.Zero(t, w.Stats().Unreachable, "a key's unavailability (a document locked) holds back no other key of its node")

	d.down.Store(false)
	require.Eventually(t, func() bool { return e.mock.Stats().Deliveries == 24 }, time.Minute, 10*time.Millisecond,
		"the orders of the node back were not all sent: %v delivered", later.Value(func() any { return e.mock.Stats().Deliveries }))
	// Their outcomes are written after the sends the mock counts.
	unconfirmed := func() (n int) {
		for key := range d.keys {
			if o, _ := get(t, e.store, order.Inbound, key); !strings.Contains(o, `"confirmationEmailSent":true`) {
				n++
			}
		}
		return n
	}
	require.Eventually(t, func() bool { return unconfirmed() == 0 }, time.Minute, 10*time.Millisecond,
		"%v sent orders of the node back not marked confirmed", later.Value(func() any { return unconfirmed() }))
	assert.Zero(t, e.mock.Stats().DuplicateRequests)
}

// A change that keeps failing past PoisonAfter is dead-lettered: the
// window is counted from its first failure, not from each.
func TestAChangeFailingPastThePoisonWindowIsDeadLettered(t *testing.T) {
	e := newEnv(t, mockmail.Config{})
	put(t, e.store, order.Inbound, "poison", paidOrder)
	w, err := watcher.New(watcher.Config{Workers: 1, Policy: noJitter, MaxEventFailures: 2, PoisonAfter: 300 * time.Millisecond},
		&poisonState{e.store, "poison"}, e.mail, quiet, func() time.Time { return pinned })
	require.NoError(t, err)
	require.NoError(t, w.Start(context.Background()))
	t.Cleanup(func() { assert.NoError(t, w.Stop(context.Background())) })
	require.Eventually(t, func() bool { return w.Stats().DeadLettered == 1 }, time.Minute, 10*time.Millisecond, "never given up on")
}

// TestAStoreBlipPoisonsNothing: MaxEventFailures tries failed within a
// second of a store's blip (an error it seldom gives, in a rebalance), and
// a paid order was dead-lettered for an operator to redrive. Failures must
// last PoisonAfter as well.
func TestAStoreBlipPoisonsNothing(t *testing.T) {
	e := newEnv(t, mockmail.Config{})
	put(t, e.store, order.Inbound, "o", paidOrder)
	flaky := &flakyGets{Store: e.store, key: "o"}
	flaky.fails.Store(4) // twice MaxEventFailures, over some 0.35s of backoff
	w := runWith(t, flaky, e.mail, watcher.Config{Workers: 1, Policy: noJitter, MaxEventFailures: 2, PoisonAfter: time.Hour})
	confirmedOnce(t, e, w, "o")
}

// hungNode is a store one of whose nodes hangs: a read of its keys
// answers unavailable after a timeout, as the SDK does. Its feed puts
// those keys on locus 1.
type hungNode struct {
	store.Store
	keys    map[string]bool
	hung    atomic.Bool
	timeout time.Duration

	mu      sync.Mutex
	failed  bool // a read of the node has answered unavailable
	now     int  // reads of it under way, started after that
	most    int  // the most at once
	started int  // reads of it started after that
}

func (h *hungNode) Subscribe(ctx context.Context, name string, colls []string, opts store.FeedOptions) (store.Subscription, error) {
	sub, err := noSnapshots(h.Store.Subscribe(ctx, name, colls, opts))
	if err != nil {
		return nil, err
	}
	return partitioned{sub, h.keys}, nil
}

type partitioned struct {
	store.Subscription
	keys map[string]bool
}

func (p partitioned) Next(ctx context.Context) (store.Event, error) {
	ev, err := p.Subscription.Next(ctx)
	if p.keys[ev.Key] {
		ev.Partition, ev.Locus = 1, 1
	}
	return ev, err
}

func (h *hungNode) State(ctx context.Context, key string) (store.State, error) {
	if !h.keys[key] || !h.hung.Load() {
		return h.Store.State(ctx, key)
	}
	h.mu.Lock()
	counted := h.failed
	if counted {
		h.started++
		h.now++
		h.most = max(h.most, h.now)
	}
	h.mu.Unlock()
	time.Sleep(h.timeout)
	h.mu.Lock()
	h.failed = true
	if counted {
		h.now--
	}
	h.mu.Unlock()
	return store.State{}, fmt.Errorf("%w: %w: its node does not answer", store.ErrUnavailable, store.ErrUnreachable)
}

// TestAHungNodeTakesOneWorkerAtATime: each try of a key whose node
// hangs costs a worker the store's timeout; parked and tried again each in
// turn, the keys of one node kept every worker waiting on it. Once the
// node has answered unavailable, one read at a time probes it.
func TestAHungNodeTakesOneWorkerAtATime(t *testing.T) {
	e := newEnv(t, mockmail.Config{})
	h := &hungNode{Store: e.store, keys: map[string]bool{}, timeout: 300 * time.Millisecond}
	h.hung.Store(true)
	putPaid(t, e.store, "hung", 8, h.keys)
	putPaid(t, e.store, "up", 40, nil)
	w := runWith(t, h, e.mail, watcher.Config{Workers: 4, Policy: noJitter})
	require.Eventually(t, func() bool { return e.mock.Stats().Deliveries == 40 }, time.Minute, 10*time.Millisecond,
		"the orders of the nodes that answer were not all sent: %v", later.Value(func() any { return e.mock.Stats().Deliveries }))
	// Probed for a while more.
	require.Eventually(t, func() bool { h.mu.Lock(); defer h.mu.Unlock(); return h.started >= 5 }, time.Minute, 10*time.Millisecond, "probed")
	h.mu.Lock()
	most := h.most
	h.mu.Unlock()
	assert.Equal(t, 1, most, "reads of the hung node at once, after it first answered unavailable")
	assert.Equal(t, int64(1), w.Stats().Unreachable)

	h.hung.Store(false)
	require.Eventually(t, func() bool { return e.mock.Stats().Deliveries == 48 }, time.Minute, 10*time.Millisecond,
		"the orders of the node back were not all sent: %v", later.Value(func() any { return e.mock.Stats().Deliveries }))
	assert.Zero(t, e.mock.Stats().DuplicateRequests)
	assert.Zero(t, w.Stats().DeadLettered)
	assert.Zero(t, w.Stats().Unreachable)
}

// TestAHeldNodesEventsLeaveTheReaderItsSlots: the events of a node held
// back, waiting apart, kept their read-ahead slots; 64 a worker of them (a
// backlog on the node as it hung) stopped the reader, and with it every
// order of the nodes that answer, until the node came back. They now wait
// in a room of their own, and the store streaming loci apart is told to
// hand out no more of the node's (store.FeedOptions.LocusHeld).
func TestAHeldNodesEventsLeaveTheReaderItsSlots(t *testing.T) {
	e := newEnv(t, mockmail.Config{})
	h := &hungNode{Store: e.store, keys: map[string]bool{}, timeout: 20 * time.Millisecond}
	h.hung.Store(true)
	putPaid(t, e.store, "hung", 200, h.keys) // read first: more than the worker's 64 slots
	putPaid(t, e.store, "up", 200, nil)
	held := make(chan func(int) bool, 1)
	w := runWith(t, &heldOptions{hungNode: h, opts: held}, e.mail, watcher.Config{Workers: 1, Policy: noJitter})
	require.Eventually(t, func() bool { return e.mock.Stats().Deliveries == 200 }, 2*time.Minute, 10*time.Millisecond,
		"the orders of the node that answers were not all sent while the other hung: %v of 200; stalled %v",
		later.Value(func() any { return e.mock.Stats().Deliveries }), later.Value(func() any { return w.Stalled() }))
	locusHeld := <-held
	require.NotNil(t, locusHeld, "the feed is told which loci are held")
	assert.True(t, locusHeld(1), "the hung node's locus is held")
	assert.False(t, locusHeld(0), "the others' are not")

	h.hung.Store(false)
	require.Eventually(t, func() bool { return e.mock.Stats().Deliveries == 400 }, 2*time.Minute, 10*time.Millisecond,
		"the orders of the node back were not all sent: %v of 400", later.Value(func() any { return e.mock.Stats().Deliveries }))
	assert.Zero(t, e.mock.Stats().DuplicateRequests)
	assert.False(t, locusHeld(1), "held no more")
}

// heldOptions hands on the FeedOptions.LocusHeld the watcher subscribes
// with.
type heldOptions struct {
	*hungNode
	opts chan func(int) bool
}

func (h *heldOptions) Subscribe(ctx context.Context, name string, colls []string, opts store.FeedOptions) (store.Subscription, error) {
	h.opts <- opts.LocusHeld
	return h.hungNode.Subscribe(ctx, name, colls, opts)
}

// TestAnEventThatAsksTheStoreNothingProbesNothing: an event of a node held
// back that needs nothing of the store (an unpaid order), taken as the
// node's probe, "succeeded" and let every held-back event at the node.
func TestAnEventThatAsksTheStoreNothingProbesNothing(t *testing.T) {
	e := newEnv(t, mockmail.Config{})
	h := &hungNode{Store: e.store, keys: map[string]bool{}, timeout: 300 * time.Millisecond}
	h.hung.Store(true)
	putPaid(t, e.store, "hung", 8, h.keys)
	for i := range 8 {
		h.keys[fmt.Sprint("unpaid", i)] = true
	}
	w := runWith(t, h, e.mail, watcher.Config{Workers: 4, Policy: noJitter})
	require.Eventually(t, func() bool { return w.Stats().Unreachable == 1 }, time.Minute, time.Millisecond, "the node held back")
	for i := range 8 {
		put(t, e.store, order.Inbound, fmt.Sprint("unpaid", i), strings.Replace(paidOrder, `"paid"`, `"pending"`, 1))
	}
	require.Eventually(t, func() bool { h.mu.Lock(); defer h.mu.Unlock(); return h.started >= 6 }, time.Minute, 10*time.Millisecond, "probed")
	h.mu.Lock()
	most := h.most
	h.mu.Unlock()
	assert.Equal(t, 1, most, "reads of the hung node at once, after it first answered unavailable")
}

// scriptedGets answers the reads of one key's state with errs in turn,
// then reads it.
type scriptedGets struct {
	store.Store
	key  string
	mu   sync.Mutex
	errs []error
}

func (s *scriptedGets) Subscribe(ctx context.Context, name string, colls []string, opts store.FeedOptions) (store.Subscription, error) {
	return noSnapshots(s.Store.Subscribe(ctx, name, colls, opts))
}

func (s *scriptedGets) State(ctx context.Context, key string) (store.State, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if key == s.key && len(s.errs) > 0 {
		err := s.errs[0]
		s.errs = s.errs[1:]
		return store.State{}, err
	}
	return s.Store.State(ctx, key)
}

// Failures are counted in a row: an outage between two (the store
// unavailable, a node failed over) starts the count again, as a send's
// outcome's refusals are.
func TestAnOutageBetweenFailuresStartsTheirCountAgain(t *testing.T) {
	e := newEnv(t, mockmail.Config{})
	put(t, e.store, order.Inbound, "o", paidOrder)
	st := &scriptedGets{Store: e.store, key: "o", errs: []error{
		errors.New("an error it seldom gives"), fmt.Errorf("%w: failing over", store.ErrUnavailable), errors.New("an error it seldom gives"),
	}}
	w := runWith(t, st, e.mail, watcher.Config{Workers: 1, Policy: noJitter, MaxEventFailures: 2, PoisonAfter: time.Nanosecond})
	waitHandled(t, w, 1)
	assert.Zero(t, w.Stats().DeadLettered)
	assert.Equal(t, 1, e.mock.Stats().Deliveries)
}

// poisonState fails every read of one key's state with an error that is
// not the store being unavailable.
type poisonState struct {
	store.Store
	key string
}

func (p *poisonState) Subscribe(ctx context.Context, name string, colls []string, opts store.FeedOptions) (store.Subscription, error) {
	return noSnapshots(p.Store.Subscribe(ctx, name, colls, opts))
}

// noSnapshots drops the state the embedded feed reads with each event, so
// that the watcher reads it through the store: where these tests fail it.
func noSnapshots(sub store.Subscription, err error) (store.Subscription, error) {
	if err != nil {
		return nil, err
	}
	return withoutState{sub}, nil
}

type withoutState struct{ store.Subscription }

func (w withoutState) Next(ctx context.Context) (store.Event, error) {
	ev, err := w.Subscription.Next(ctx)
	ev.State = nil
	return ev, err
}

func (p *poisonState) State(ctx context.Context, key string) (store.State, error) {
	if key == p.key {
		return store.State{}, errors.New("no such thing as this key's state")
	}
	return p.Store.State(ctx, key)
}

// TestPoisonEventIsDeadLetteredAndTheFeedGoesOn (finding 10): a change
// that keeps failing is dead-lettered after MaxEventFailures and
// acknowledged; the orders on its worker and behind it go out.
func TestPoisonEventIsDeadLetteredAndTheFeedGoesOn(t *testing.T) {
	e := newEnv(t, mockmail.Config{})
	put(t, e.store, order.Inbound, "poison", paidOrder)
	for i := range 60 {
		put(t, e.store, order.Inbound, fmt.Sprint("good_", i), paidOrder)
	}
	logs := &syncBuffer{}
	log := slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	// One worker: the poison event waits apart between its tries.
	w, err := watcher.New(watcher.Config{Workers: 1, Policy: noJitter, MaxEventFailures: 3, PoisonAfter: time.Nanosecond}, &poisonState{e.store, "poison"}, e.mail, log, func() time.Time { return pinned })
	require.NoError(t, err)
	require.NoError(t, w.Start(context.Background()))
	t.Cleanup(func() { assert.NoError(t, w.Stop(context.Background())) })
	require.Eventually(t, func() bool { return e.mock.Stats().Deliveries == 60 && w.Stats().DeadLettered == 1 }, 60*time.Second, 10*time.Millisecond,
		"delivered %v of 60; logs:\n%v", later.Value(func() any { return e.mock.Stats().Deliveries }), later.Value(func() any { return logs.String() }))
	d := mustDeadLetter(t, e.store, "poison")
	assert.Equal(t, order.ReasonPoisonEvent, d.Reason)
	assert.Contains(t, d.LastError, "no such thing")
	assert.Len(t, logs.Lines("change given up on and dead-lettered"), 1)
	assert.Equal(t, int64(1), w.Stats().DeadLettered)
	assert.Zero(t, w.Stats().GivenUp)
}

// deadLetterFails refuses every dead-letter write for good.
type deadLetterFails struct{ *poisonState }

func (d deadLetterFails) Apply(ctx context.Context, ws []store.Write) ([]uint64, error) {
	if ws[0].Collection == order.DeadLetter {
		return nil, errors.New("disk I/O error")
	}
	return d.poisonState.Apply(ctx, ws)
}

// A poison event whose dead letter cannot be written is let go, logged,
// and counted as given up, not as dead-lettered: the dead letters' alert
// sent operators to a list without it.
func TestAPoisonEventWithoutItsDeadLetterIsCountedGivenUp(t *testing.T) {
	e := newEnv(t, mockmail.Config{})
	put(t, e.store, order.Inbound, "poison", paidOrder)
	logs := &syncBuffer{}
	log := slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	w, err := watcher.New(watcher.Config{Workers: 1, Policy: noJitter, MaxEventFailures: 2, PoisonAfter: time.Nanosecond},
		deadLetterFails{&poisonState{e.store, "poison"}}, e.mail, log, func() time.Time { return pinned })
	require.NoError(t, err)
	require.NoError(t, w.Start(context.Background()))
	t.Cleanup(func() { assert.NoError(t, w.Stop(context.Background())) })
	waitHandled(t, w, 1)
	assert.Len(t, logs.Lines("could not dead-letter it either"), 1)
	assert.Equal(t, int64(1), w.Stats().GivenUp)
	assert.Zero(t, w.Stats().DeadLettered)
}

// deadLetterRaced answers the first dead-letter write as if another
// instance had written the dead letter just before (ErrExists), and can
// hold every dead-letter write until its context ends.
type deadLetterRaced struct {
	*poisonState
	raced   atomic.Bool
	purge   bool // the race is an operator's purge of the dead letter read
	hang    bool
	entered chan struct{} // closed at the first held write
	once    sync.Once
	acked   atomic.Bool // the poison event was acknowledged
}

func (d *deadLetterRaced) Apply(ctx context.Context, ws []store.Write) ([]uint64, error) {
	if ws[0].Collection == order.DeadLetter {
		if d.hang {
			d.once.Do(func() { close(d.entered) })
			<-ctx.Done()
			return nil, ctx.Err()
		}
		if d.raced.CompareAndSwap(false, true) {
			if d.purge {
				if cur, err := d.poisonState.Store.Get(ctx, order.DeadLetter, ws[0].Key); err == nil {
					_ = d.poisonState.Store.Remove(ctx, order.DeadLetter, cur.Key, cur.CAS) // deadletters purge
				}
				return d.poisonState.Apply(ctx, ws)
			}
			return nil, fmt.Errorf("insert %s: %w", ws[0].Key, store.ErrExists)
		}
	}
	return d.poisonState.Apply(ctx, ws)
}

func (d *deadLetterRaced) Subscribe(ctx context.Context, name string, colls []string, opts store.FeedOptions) (store.Subscription, error) {
	sub, err := d.poisonState.Subscribe(ctx, name, colls, opts)
	if err != nil {
		return nil, err
	}
	return ackSpy{sub, d}, nil
}

type ackSpy struct {
	store.Subscription
	d *deadLetterRaced
}

func (a ackSpy) Next(ctx context.Context) (store.Event, error) {
	ev, err := a.Subscription.Next(ctx)
	if ev.Key == a.d.key {
		ack := ev.Ack
		ev.Ack = func() { a.d.acked.Store(true); ack() }
	}
	return ev, err
}

// A poison event's dead letter written meanwhile by someone else is read
// again and written over: the event is not let go without one.
func TestAPoisonDeadLetterWrittenMeanwhileIsWrittenOver(t *testing.T) {
	e := newEnv(t, mockmail.Config{})
	put(t, e.store, order.Inbound, "poison", paidOrder)
	logs := &syncBuffer{}
	log := slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	st := &deadLetterRaced{poisonState: &poisonState{e.store, "poison"}}
	w, err := watcher.New(watcher.Config{Workers: 1, Policy: noJitter, MaxEventFailures: 2, PoisonAfter: time.Nanosecond}, st, e.mail, log, func() time.Time { return pinned })
	require.NoError(t, err)
	require.NoError(t, w.Start(context.Background()))
	t.Cleanup(func() { assert.NoError(t, w.Stop(context.Background())) })
	waitHandled(t, w, 1)
	assert.True(t, st.raced.Load(), "the first dead-letter write was refused")
	assert.True(t, st.acked.Load())
	assert.Equal(t, order.ReasonPoisonEvent, mustDeadLetter(t, e.store, "poison").Reason)
	assert.Empty(t, logs.Lines("could not dead-letter it either"))
}

// The order's earlier dead letter purged by an operator between the
// poison dead letter's read and its write: read again, and written.
func TestAPoisonDeadLetterPurgedMeanwhileIsWritten(t *testing.T) {
	e := newEnv(t, mockmail.Config{})
	put(t, e.store, order.DeadLetter, "poison", string(order.DeadLetterDoc{DocID: "poison", Type: order.TypeConfirmation, Reason: "permanent_error"}.Encode()))
	put(t, e.store, order.Inbound, "poison", paidOrder)
	st := &deadLetterRaced{poisonState: &poisonState{e.store, "poison"}, purge: true}
	runWith(t, st, e.mail, watcher.Config{Workers: 1, Policy: noJitter, MaxEventFailures: 2, PoisonAfter: time.Nanosecond})
	require.Eventually(t, func() bool { return st.acked.Load() }, 30*time.Second, 5*time.Millisecond, "the poison event was never let go")
	assert.True(t, st.raced.Load(), "the purge raced the write")
	assert.Equal(t, order.ReasonPoisonEvent, mustDeadLetter(t, e.store, "poison").Reason)
}

// A watcher stopped while a poison event's dead letter is being written
// does not let the event go: it is replayed.
func TestAPoisonEventStoppedBeforeItsDeadLetterIsReplayed(t *testing.T) {
	e := newEnv(t, mockmail.Config{})
	put(t, e.store, order.Inbound, "poison", paidOrder)
	st := &deadLetterRaced{poisonState: &poisonState{e.store, "poison"}, hang: true, entered: make(chan struct{})}
	w, err := watcher.New(watcher.Config{Workers: 1, Policy: noJitter, MaxEventFailures: 2, PoisonAfter: time.Nanosecond}, st, e.mail, quiet, func() time.Time { return pinned })
	require.NoError(t, err)
	require.NoError(t, w.Start(context.Background()))
	recvWithin(t, st.entered, "the dead letter's write")
	ctx, cancel := context.WithTimeout(context.Background(), time.Second) // its grace ends while the write hangs
	defer cancel()
	require.NoError(t, w.Stop(ctx))
	assert.False(t, st.acked.Load(), "acknowledged with no dead letter written")
	_, found := get(t, e.store, order.DeadLetter, "poison")
	assert.False(t, found)
}

// refusesOutcome refuses every outcome that marks one order confirmed,
// with an error that is neither a guard nor the store being unavailable:
// settle tries it again until the watcher stops.
type refusesOutcome struct {
	store.Store
	key string
}

func (r *refusesOutcome) Apply(ctx context.Context, ws []store.Write) ([]uint64, error) {
	for _, w := range ws {
		if w.Collection == order.Inbound && w.Key == r.key && w.Op == store.OpReplace {
			return nil, errors.New("refused")
		}
	}
	return r.Store.Apply(ctx, ws)
}

// An order whose outcome the store keeps refusing holds up its own later
// changes only: with one worker, the orders after its edit go out.
func TestAnOutcomeTheStoreKeepsRefusingHoldsNoWorker(t *testing.T) {
	e := newEnv(t, mockmail.Config{})
	st := &refusesOutcome{e.store, "bad"}
	w, err := watcher.New(watcher.Config{Workers: 1, Policy: noJitter}, st, e.mail, quiet, func() time.Time { return pinned })
	require.NoError(t, err)
	require.NoError(t, w.Start(context.Background()))
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second) // its outcome is given up at the stop
		defer cancel()
		assert.NoError(t, w.Stop(ctx))
	})
	put(t, e.store, order.Inbound, "bad", paidOrder)
	require.Eventually(t, func() bool { return e.mock.Stats().Deliveries == 1 }, 30*time.Second, 5*time.Millisecond, "bad's send")
	put(t, e.store, order.Inbound, "bad", strings.Replace(paidOrder, `"paid"`, `"paid","note":"gift"`, 1)) // the order system edits it
	for i := range 5 {
		put(t, e.store, order.Inbound, fmt.Sprint("good_", i), paidOrder)
	}
	require.Eventually(t, func() bool { return e.mock.Stats().Deliveries == 6 }, 30*time.Second, 5*time.Millisecond,
		"delivered %v of 6: the good orders wait behind bad's outcome", later.Value(func() any { return e.mock.Stats().Deliveries }))
}

// An outcome a store's blip refuses MaxEventFailures times within a
// second is not given up on: its refusals must last PoisonAfter too.
func TestAnOutcomeABlipRefusesIsWritten(t *testing.T) {
	e := newEnv(t, mockmail.Config{})
	refused := errors.New("refused")
	st := &scriptedOutcome{Store: e.store, key: "o", errs: []error{refused, refused, refused, refused}}
	w := runWith(t, st, e.mail, watcher.Config{Workers: 1, Policy: noJitter, MaxEventFailures: 2, PoisonAfter: time.Hour})
	put(t, e.store, order.Inbound, "o", paidOrder)
	confirmedOnce(t, e, w, "o")
}

// scriptedOutcome answers the writes that mark one order confirmed with
// errs in turn, then makes them.
type scriptedOutcome struct {
	store.Store
	key  string
	mu   sync.Mutex
	errs []error
}

func (r *scriptedOutcome) Apply(ctx context.Context, ws []store.Write) ([]uint64, error) {
	for _, w := range ws {
		if w.Collection == order.Inbound && w.Key == r.key && w.Op == store.OpReplace {
			r.mu.Lock()
			var err error
			if len(r.errs) > 0 {
				err, r.errs = r.errs[0], r.errs[1:]
			}
			r.mu.Unlock()
			if err != nil {
				return nil, err
			}
		}
	}
	return r.Store.Apply(ctx, ws)
}

// A send's outcome refused, then the store unavailable, then refused again
// is not refused twice in a row: the outage between starts the count
// again. (The outage was waited out where settle could not see it, and the
// order was dead-lettered with its email sent.)
func TestAnOutageBetweenAnOutcomesRefusalsStartsTheirCountAgain(t *testing.T) {
	e := newEnv(t, mockmail.Config{})
	st := &scriptedOutcome{Store: e.store, key: "o", errs: []error{
		errors.New("refused"), fmt.Errorf("%w: failing over", store.ErrUnavailable), errors.New("refused"),
	}}
	w := runWith(t, st, e.mail, watcher.Config{Workers: 1, Policy: noJitter, MaxEventFailures: 2, PoisonAfter: time.Nanosecond})
	put(t, e.store, order.Inbound, "o", paidOrder)
	confirmedOnce(t, e, w, "o")
}

// TestAnOutcomeTheStoreRefusesForGoodIsDeadLettered: an outcome the store
// keeps refusing (neither unavailable nor a conflict) is given up on after
// MaxEventFailures tries: the order is dead-lettered, its dead letter says
// the email went out (a redrive sends again under the same key), and the
// event is acknowledged, so that the feed's checkpoint moves past it and
// nothing piles up behind it for the life of the process.
func TestAnOutcomeTheStoreRefusesForGoodIsDeadLettered(t *testing.T) {
	e := newEnv(t, mockmail.Config{})
	st := &refusesOutcome{e.store, "bad"}
	w, err := watcher.New(watcher.Config{Workers: 1, Policy: noJitter, MaxEventFailures: 3, PoisonAfter: time.Nanosecond}, st, e.mail, quiet, func() time.Time { return pinned })
	require.NoError(t, err)
	require.NoError(t, w.Start(context.Background()))
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second) // an outcome still tried is given up at the stop
		defer cancel()
		assert.NoError(t, w.Stop(ctx))
	})
	put(t, e.store, order.Inbound, "bad", paidOrder)
	require.Eventually(t, func() bool { _, ok := get(t, e.store, order.DeadLetter, "bad"); return ok }, 30*time.Second, 5*time.Millisecond,
		"the refused outcome was never given up on")
	d := mustDeadLetter(t, e.store, "bad")
	assert.Equal(t, order.ReasonPoisonEvent, d.Reason)
	assert.Contains(t, d.LastError, "the email was sent, but the store refused its outcome")
	assert.Equal(t, 1, e.mock.Delivered()[d.IdempotencyKey], "a redrive sends under the key the email went out with: %v", e.mock.Delivered())
	require.Eventually(t, func() bool { return w.Stats().Handled == 1 }, 30*time.Second, 5*time.Millisecond,
		"the event was acknowledged: handled %v", later.Value(func() any { return w.Stats().Handled }))
	assert.Equal(t, 1, e.mock.Stats().Deliveries, "sent once")
	assert.Empty(t, w.Stalled())
}

// replaying hands out the first event twice, the second time with its old
// snapshot of the key's state: a change read before the worker's own write
// of the key was committed.
type replaying struct {
	store.Store
}

func (r *replaying) Subscribe(ctx context.Context, name string, colls []string, opts store.FeedOptions) (store.Subscription, error) {
	sub, err := r.Store.Subscribe(ctx, name, colls, opts)
	if err != nil {
		return nil, err
	}
	return &replaySub{Subscription: sub}, nil
}

type replaySub struct {
	store.Subscription
	first *store.Event
	n     int
}

func (r *replaySub) Next(ctx context.Context) (store.Event, error) {
	r.n++
	if r.n == 2 && r.first != nil {
		again := *r.first
		again.Ack = func() {}
		return again, nil
	}
	ev, err := r.Subscription.Next(ctx)
	if err == nil && r.first == nil {
		r.first = &ev
	}
	return ev, err
}

// TestAStaleSnapshotIsReadAgain: the feed's snapshot of a key's state
// serves only if the worker has not written the key since it was taken;
// otherwise the change would be decided on a state without the worker's
// own retry document, and sent again.
func TestAStaleSnapshotIsReadAgain(t *testing.T) {
	e := newEnv(t, mockmail.Config{FailRate: 1, FailStatus: 503})
	put(t, e.store, order.Inbound, "o", paidOrder)
	w := runWith(t, &replaying{e.store}, e.mail, watcher.Config{Workers: 1, Policy: noJitter})
	waitHandled(t, w, 3) // the order, its replay with the old snapshot, the retry document written
	_, retry := get(t, e.store, order.Retry, "o")
	assert.True(t, retry)
	assert.Equal(t, 1, e.mock.Stats().Requests, "the replay read the state with the retry document in it")
}

// TestAtomicOutcomesLeaveOwnConfirmationsUnread: on a store whose outcomes
// are atomic, the watcher asks the feed to leave out what it would ignore
// unread, its own confirmations first. One worker handles the feed in
// order: 50 paid orders, then (after their confirmations) one more; when
// that one is handled, no confirmation was.
func TestAtomicOutcomesLeaveOwnConfirmationsUnread(t *testing.T) {
	e := newEnv(t, mockmail.Config{})
	for i := range 50 {
		put(t, e.store, order.Inbound, fmt.Sprintf("order_%02d", i), paidOrder)
	}
	w, err := watcher.New(watcher.Config{Workers: 1, Policy: noJitter, AtomicOutcomes: true, SingleConsumer: true},
		e.store, e.mail, quiet, func() time.Time { return pinned })
	require.NoError(t, err)
	require.NoError(t, w.Start(context.Background()))
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		assert.NoError(t, w.Stop(ctx))
	})
	require.Eventually(t, func() bool { return e.mock.Stats().Deliveries == 50 }, 30*time.Second, 5*time.Millisecond,
		"delivered %v of 50", later.Value(func() any { return e.mock.Stats().Deliveries }))
	put(t, e.store, order.Inbound, "order_last", paidOrder)
	waitHandled(t, w, 51)
	assert.Zero(t, w.Stats().Ignored, "a confirmation came through the feed")
	assert.Equal(t, 51, e.mock.Stats().Deliveries)
}

// sharedApplies records whether each Apply's context carried
// store.WithSharedCommit.
type sharedApplies struct {
	store.Store
	mu     sync.Mutex
	shared []bool
}

func (s *sharedApplies) Apply(ctx context.Context, writes []store.Write) ([]uint64, error) {
	s.mu.Lock()
	s.shared = append(s.shared, store.SharedCommit(ctx))
	s.mu.Unlock()
	return s.Store.Apply(ctx, writes)
}

// TestWorkersWritesShareCommits: the workers' outcomes are marked as many
// writers' at once, so that a group-committing store may hold each for
// others to share its commit (a command's writes are not, and commit at
// once).
func TestWorkersWritesShareCommits(t *testing.T) {
	e := newEnv(t, mockmail.Config{})
	put(t, e.store, order.Inbound, "order_1", paidOrder)
	st := &sharedApplies{Store: e.store}
	e.w = startWatcher(t, st, e.mail, &syncBuffer{})
	waitHandled(t, e.w, 2)
	st.mu.Lock()
	defer st.mu.Unlock()
	require.NotEmpty(t, st.shared, "the outcome was written")
	for i, shared := range st.shared {
		assert.True(t, shared, "write %d without store.WithSharedCommit", i)
	}
}

// hiccups fails the first outcome write of key's retry document, and the
// state read after it, each once, with errors that are not the store being
// unavailable.
type hiccups struct {
	store.Store
	key                    string
	applyFails, stateFails atomic.Int32
	conflicts              bool // the writes fail their guards
}

func (h *hiccups) Apply(ctx context.Context, writes []store.Write) ([]uint64, error) {
	for _, w := range writes {
		if w.Collection == order.Retry && w.Key == h.key && h.applyFails.Add(-1) >= 0 {
			if h.conflicts {
				return nil, &store.WriteError{Write: w, Err: store.ErrCASMismatch}
			}
			return nil, errors.New("a write hiccup nobody planned for")
		}
	}
	return h.Store.Apply(ctx, writes)
}

func (h *hiccups) State(ctx context.Context, key string) (store.State, error) {
	if key == h.key && h.stateFails.Add(-1) >= 0 {
		return store.State{}, errors.New("a read hiccup nobody planned for")
	}
	return h.Store.State(ctx, key)
}

// startSingle starts one worker, the only consumer, on a store with atomic
// outcomes: a send takes no claim first, so that the first write after it
// is its outcome's.
func startSingle(t *testing.T, st store.Store, s watcher.Sender, logs *syncBuffer) *watcher.Watcher {
	t.Helper()
	return startSingleWith(t, watcher.Config{}, st, s, logs)
}

func startSingleWith(t *testing.T, cfg watcher.Config, st store.Store, s watcher.Sender, logs *syncBuffer) *watcher.Watcher {
	t.Helper()
	cfg.Workers, cfg.Policy, cfg.SingleConsumer, cfg.AtomicOutcomes = 1, noJitter, true, true
	return runLoggedTo(t, st, s, cfg, slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug})))
}

// TestAFailedReadWhileSettlingKeepsTheOutcome: the outcome of a failed
// retry cannot be written at first, nor the state read again; the outcome
// is still written on what was read before (a state read as nothing
// settled the send as dropped: the flagged retry document stayed as it
// was, which no sweep takes again, and the order was never confirmed).
func TestAFailedReadWhileSettlingKeepsTheOutcome(t *testing.T) {
	e := newEnv(t, mockmail.Config{FailRate: 1, FailStatus: 503})
	put(t, e.store, order.Inbound, "o", paidOrder)
	put(t, e.store, order.Retry, "o", `{"type":"confirmation","docId":"o","attempt":1,"ts":1,"fireRetry":true,"idempotencyKey":"confirmation:o@1"}`)
	h := &hiccups{Store: e.store, key: "o"}
	h.applyFails.Store(1)
	h.stateFails.Store(1)
	logs := &syncBuffer{}
	w := startSingle(t, h, e.mail, logs)
	waitHandled(t, w, 2) // the order (ignored), the retry (fails again); the rewritten retry is left out
	v, _ := get(t, e.store, order.Retry, "o")
	r, err := order.DecodeRetryDoc([]byte(v))
	require.NoError(t, err, "%s", v)
	assert.Equal(t, 2, r.Attempt, "the failed attempt was counted: %s", v)
	assert.False(t, r.FireRetry, "the retry document waits for the sweep again: %s", v)
	assert.Zero(t, h.stateFails.Load(), "the state read failed, as planned")
	assert.Len(t, logs.Lines("read state to settle a send; trying again", "a read hiccup nobody planned for"), 1, "%s", logs.String())
}

// TestOutcomeConflictsWaitBetweenTries: the outcome's guards keep failing
// (someone keeps writing the key); past maxStale conflicts in a row the
// watcher waits between tries instead of reading and writing as fast as
// the store answers, and still writes the outcome.
func TestOutcomeConflictsWaitBetweenTries(t *testing.T) {
	e := newEnv(t, mockmail.Config{FailRate: 1, FailStatus: 503})
	put(t, e.store, order.Inbound, "o", paidOrder)
	put(t, e.store, order.Retry, "o", `{"type":"confirmation","docId":"o","attempt":1,"ts":1,"fireRetry":true,"idempotencyKey":"confirmation:o@1"}`)
	h := &hiccups{Store: e.store, key: "o", conflicts: true}
	h.applyFails.Store(12)
	logs := &syncBuffer{}
	w := startSingle(t, h, e.mail, logs)
	waitHandled(t, w, 2)
	v, _ := get(t, e.store, order.Retry, "o")
	assert.Contains(t, v, `"attempt":2`, "the outcome was written after the conflicts")
	assert.Len(t, logs.Lines("keep changing; trying again"), 2, "conflicts 11 and 12 waited:\n%s", logs.String())
}

// holdFirst holds its first send until release closes.
type holdFirst struct {
	watcher.Sender
	once             sync.Once
	holding, release chan struct{}
	mu               sync.Mutex
	keys             []string
}

func (h *holdFirst) Send(ctx context.Context, key string, body []byte) error {
	h.mu.Lock()
	h.keys = append(h.keys, key)
	h.mu.Unlock()
	first := false
	h.once.Do(func() { first = true; close(h.holding) })
	if first {
		select {
		case <-h.release:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return h.Sender.Send(ctx, key, body)
}

// TestAnOrderCancelledWhileItsEventWaitsIsNotMailed: the one worker is
// busy with order a's send while the feed hands out order b, paid; b is
// cancelled before the worker gets to it. The state that came with b's
// event is older than SnapshotAge by then: it is read again, and b is not
// mailed (the feed leaves the cancellation itself out: nothing to do for
// an unpaid order).
func TestAnOrderCancelledWhileItsEventWaitsIsNotMailed(t *testing.T) {
	e := newEnv(t, mockmail.Config{})
	put(t, e.store, order.Inbound, "a", paidOrder)
	st := &markedFeed{Store: e.store, key: "b", seen: make(chan struct{})}
	send := &holdFirst{Sender: e.mail, holding: make(chan struct{}), release: make(chan struct{})}
	w := startSingleWith(t, watcher.Config{SnapshotAge: time.Nanosecond}, st, send, &syncBuffer{})
	recvWithin(t, send.holding, "order a was never sent")
	put(t, e.store, order.Inbound, "b", paidOrder)
	recvWithin(t, st.seen, "the feed never handed out order b")
	put(t, e.store, order.Inbound, "b", strings.Replace(paidOrder, `"paid"`, `"cancelled"`, 1))
	close(send.release)
	waitHandled(t, w, 2)
	send.mu.Lock()
	defer send.mu.Unlock()
	assert.Equal(t, []string{"confirmation:a@1"}, send.keys, "only order a was mailed")
	b, _ := get(t, e.store, order.Inbound, "b")
	assert.NotContains(t, b, `"confirmationEmailSent":true`)
}

// slowSend makes every send take a few milliseconds: past a worker's bound
// of 2ms, so that Stalled reports it while it works.
type slowSend struct{ watcher.Sender }

func (slowSend) Send(context.Context, string, []byte) error {
	time.Sleep(3 * time.Millisecond)
	return nil
}

// TestStalledReadsAWorkersKeyWhileItMovesOn: the health check reads the
// key of an overdue worker while the worker goes on to its line's next
// event; the race detector (CI runs the tests under it) sees a read of
// the event the worker rewrites, if the key is not a copy of its own.
func TestStalledReadsAWorkersKeyWhileItMovesOn(t *testing.T) {
	e := newEnv(t, mockmail.Config{})
	w, err := watcher.New(watcher.Config{Workers: 1, Policy: noJitter, ClaimTTL: time.Millisecond,
		SingleConsumer: true, AtomicOutcomes: true}, e.store, slowSend{e.mail}, quiet, nil)
	require.NoError(t, err)
	require.NoError(t, w.Start(context.Background()))
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		assert.NoError(t, w.Stop(ctx))
	})
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			select {
			case <-stop:
				return
			default:
				_ = w.Stalled()
			}
		}
	}()
	for i := range 100 {
		k := fmt.Sprint("k", i%3) // a few keys: lines with events waiting
		put(t, e.store, order.Inbound, k, paidOrder)
		put(t, e.store, order.Retry, k, `{"type":"confirmation","docId":"`+k+`","attempt":1,"ts":1,"fireRetry":true,"idempotencyKey":"confirmation:`+k+`@1"}`)
	}
	// Settled: every key's last change handled (earlier ones superseded).
	counts := func() any { c, _ := e.store.Counts(context.Background()); return c }
	require.Eventually(t, func() bool {
		c, err := e.store.Counts(context.Background())
		return err == nil && c.RetryDocs == 0 && c.OrdersConfirmed == 3
	}, 60*time.Second, 5*time.Millisecond, "not settled: %+v", later.Value(counts))
	close(stop)
	<-done
}

// sendFunc is a Sender made of a function.
type sendFunc func(ctx context.Context, key string, body []byte) error

func (f sendFunc) Send(ctx context.Context, key string, body []byte) error { return f(ctx, key, body) }

// markedFeed is a store whose feed closes seen when it hands out a change
// of key whose value holds mark (any change of key, mark "").
type markedFeed struct {
	store.Store
	key, mark string
	seen      chan struct{}
	once      sync.Once
}

func (m *markedFeed) Subscribe(ctx context.Context, name string, colls []string, opts store.FeedOptions) (store.Subscription, error) {
	sub, err := m.Store.Subscribe(ctx, name, colls, opts)
	if err != nil {
		return nil, err
	}
	return &markedSub{Subscription: sub, m: m}, nil
}

type markedSub struct {
	store.Subscription
	m *markedFeed
}

func (s *markedSub) Next(ctx context.Context) (store.Event, error) {
	ev, err := s.Subscription.Next(ctx)
	if err == nil && ev.Key == s.m.key && strings.Contains(string(ev.Value), s.m.mark) {
		s.m.once.Do(func() { close(s.m.seen) })
	}
	return ev, err
}

// An outcome that writes the attempt record alone (the retry dropped
// during its send) is no position on the feed: the key's next event, read
// during that send with its state, reads the state again. It decided on
// the state read before the record was written, and its send's record,
// built from the stale one, lost an attempt.
func TestAnAttemptRecordWrittenAloneIsNotTakenForAFeedPosition(t *testing.T) {
	ctx := context.Background()
	base, err := embedded.Open(ctx, embedded.Config{Path: filepath.Join(t.TempDir(), "o.db")})
	require.NoError(t, err)
	t.Cleanup(func() { base.Close() })
	st := &markedFeed{Store: base, key: "order_1", mark: `"note":"edited"`, seen: make(chan struct{})}

	var calls atomic.Int32
	var sendErr atomic.Value // what went wrong in the send, for the failure message
	send := sendFunc(func(ctx context.Context, key string, body []byte) error {
		switch calls.Add(1) {
		case 1: // the first send fails: a retry document
			return &mailer.SendError{Class: mailer.Transient, Status: 503}
		case 2: // the retry's: the operator drops the retry and the shop edits the order meanwhile
			if d, err := base.Get(ctx, order.Retry, "order_1"); err == nil {
				if err := base.Remove(ctx, order.Retry, "order_1", d.CAS); err != nil {
					sendErr.Store("drop: " + err.Error())
				}
			}
			if _, err := base.Upsert(ctx, order.Inbound, "order_1",
				[]byte(`{"email":"ann@example.com","paymentStatus":"paid","note":"edited"}`)); err != nil {
				sendErr.Store("edit: " + err.Error())
			}
			select { // the feed has read the edit, with its state, before this send's outcome
			case <-st.seen:
			case <-time.After(time.Minute):
				sendErr.Store("the feed did not hand out the edit within a minute")
			}
			return &mailer.SendError{Class: mailer.Transient, Status: 503}
		}
		return nil
	})
	w, err := watcher.New(watcher.Config{Workers: 2, Policy: noJitter, SingleConsumer: true, AtomicOutcomes: true,
		SnapshotAge: time.Hour}, st, send, quiet, func() time.Time { return pinned })
	require.NoError(t, err)
	require.NoError(t, w.Start(ctx))
	t.Cleanup(func() {
		c, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		w.Stop(c)
	})
	put(t, base, order.Inbound, "order_1", paidOrder)
	require.Eventually(t, func() bool { _, ok := get(t, base, order.Retry, "order_1"); return ok }, time.Minute, 5*time.Millisecond)
	v, _ := get(t, base, order.Retry, "order_1")
	flagged, err := order.SetFireRetry([]byte(v)) // as the sweep does
	require.NoError(t, err)
	put(t, base, order.Retry, "order_1", string(flagged))

	require.Eventually(t, func() bool {
		o, _ := get(t, base, order.Inbound, "order_1")
		dec, err := order.DecodeOrder([]byte(o))
		return err == nil && dec.ConfirmationEmailSent
	}, time.Minute, 5*time.Millisecond, "the edited order is confirmed; the send's trouble: %v", later.Value(sendErr.Load))
	assert.Nil(t, sendErr.Load())
	require.EqualValues(t, 3, calls.Load(), "three requests")
	a, err := base.Get(ctx, order.Attempts, "order_1")
	require.NoError(t, err)
	rec, err := order.DecodeAttempts(a.Value)
	require.NoError(t, err)
	assert.Equal(t, 3, rec.Total, "every request made is in the attempt record: %s", a.Value)
}
