package watcher_test

import (
	"bytes"
	"context"
	"log/slog"
	"net/http/httptest"
	"path/filepath"
	"strconv"
	"sync"
	"testing"
	"time"

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

var pinned = time.Date(2026, 11, 21, 12, 0, 0, 0, time.UTC)

// syncBuffer collects log output from several goroutines.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

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
	c, err := mailer.New(mailer.Config{URL: srv.URL, Timeout: 5 * time.Second})
	require.NoError(t, err)
	return &env{store: st, mock: m, mail: c}
}

func startWatcher(t *testing.T, st store.Store, s watcher.Sender, logs *syncBuffer) *watcher.Watcher {
	t.Helper()
	log := slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	w, err := watcher.New(watcher.Config{Workers: 4}, st, s, log, func() time.Time { return pinned })
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
		require.ErrorIs(t, err, store.ErrNotFound)
		return "", false
	}
	return string(d.Value), true
}

func waitHandled(t *testing.T, w *watcher.Watcher, n int64) {
	t.Helper()
	require.Eventually(t, func() bool { return w.Stats().Handled >= n }, 10*time.Second, 5*time.Millisecond,
		"handled %d events, want %d", w.Stats().Handled, n)
}

const paidOrder = `{"email":"ann@example.com","paymentStatus":"paid","confirmationEmailSent":false,"items":[{"name":"Swedish Meatballs 500g","amount":2,"unitPrice":9.95}]}`

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
	assert.Equal(t, map[string]int{"confirmation:order_1": 1}, e.mock.Delivered())
}

func TestFirstSendFailureWritesRetryDoc(t *testing.T) {
	e := newEnv(t, mockmail.Config{FailRate: 1})
	put(t, e.store, order.Inbound, "order_2", paidOrder)

	e.start(t)
	waitHandled(t, e.w, 2) // insert (send fails) + our own retry document (ignored)
	v, ok := get(t, e.store, order.Retry, "order_2")
	require.True(t, ok)
	assert.JSONEq(t, `{"type":"confirmation","docId":"order_2","attempt":1,"ts":`+strconv.FormatInt(pinned.UnixMilli(), 10)+`,"fireRetry":false}`, v)
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
	e := newEnv(t, mockmail.Config{FailRate: 1})
	put(t, e.store, order.Inbound, "order_4", paidOrder)
	put(t, e.store, order.Retry, "order_4", `{"type":"confirmation","docId":"order_4","attempt":3,"ts":1,"fireRetry":true}`)
	e.start(t)
	waitHandled(t, e.w, 3) // order (ignored), retry (fails), our own update (ignored)
	v, _ := get(t, e.store, order.Retry, "order_4")
	assert.JSONEq(t, `{"type":"confirmation","docId":"order_4","attempt":4,"ts":`+strconv.FormatInt(pinned.UnixMilli(), 10)+`,"fireRetry":false}`, v)
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

func TestMalformedDocumentsAreSkippedAndFeedGoesOn(t *testing.T) {
	st, err := embedded.Open(context.Background(), embedded.Config{Path: filepath.Join(t.TempDir(), "o.db")})
	require.NoError(t, err)
	t.Cleanup(func() { st.Close() })
	m, err := mockmail.New(mockmail.Config{})
	require.NoError(t, err)
	srv := httptest.NewServer(m)
	t.Cleanup(srv.Close)
	c, err := mailer.New(mailer.Config{URL: srv.URL})
	require.NoError(t, err)

	put(t, st, order.Inbound, "bad_json", `{"paymentStatus":"paid"`)
	put(t, st, order.Inbound, "bad_array", `["paid"]`)
	put(t, st, order.Inbound, "bad_types", `{"paymentStatus":"paid","confirmationEmailSent":"no"}`)
	put(t, st, order.Retry, "bad_retry", `{"attempt":1}`)
	put(t, st, order.Inbound, "good", paidOrder)
	logs := &syncBuffer{}
	w := startWatcher(t, st, c, logs)

	waitHandled(t, w, 6)
	o, _ := get(t, st, order.Inbound, "good")
	assert.Contains(t, o, `"confirmationEmailSent":true`)
	assert.Equal(t, int64(4), w.Stats().Skipped)
	out := logs.String()
	for _, want := range []string{
		`key=bad_json reason="malformed document: unexpected end of JSON input"`,
		`key=bad_array reason="malformed document: not a JSON object"`,
		"key=bad_types reason=\"malformed document: field confirmationEmailSent is a JSON string, want bool\"",
		"key=bad_retry reason=\"malformed document: docId is missing or empty\"",
	} {
		assert.Contains(t, out, want)
	}
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
	<-hang.started
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	require.NoError(t, w.Stop(ctx), "Stop returns once its deadline aborts the send")
	_, ok := get(t, st, order.Retry, "order_h")
	assert.False(t, ok, "an aborted send is not a failure to retry")

	// After a restart the event comes back and the send succeeds.
	ok200 := &hangingSender{started: make(chan struct{}, 1), send: func(context.Context) error { return nil }}
	w2 := startWatcher(t, st, ok200, &syncBuffer{})
	<-ok200.started
	waitHandled(t, w2, 1)
	o, _ := get(t, st, order.Inbound, "order_h")
	assert.Contains(t, o, `"confirmationEmailSent":true`)
}
