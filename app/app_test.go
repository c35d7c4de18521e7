package app_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http/httptest"
	"path/filepath"
	"testing"
	"time"

	"github.com/ordermail/ordermail/app"
	"github.com/ordermail/ordermail/fixtures"
	"github.com/ordermail/ordermail/mailer"
	"github.com/ordermail/ordermail/mailer/mockmail"
	"github.com/ordermail/ordermail/order"
	"github.com/ordermail/ordermail/store"
	"github.com/ordermail/ordermail/timer"
	"github.com/ordermail/ordermail/watcher"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/fx"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

type run struct {
	cfg  app.Config
	mock *mockmail.Server
}

// fast is a policy that retries within milliseconds and never gives up.
var fast = order.Policy{Backoff: order.BackoffExponential, MinDelay: 10 * time.Millisecond, MaxDelay: 100 * time.Millisecond,
	Jitter: 0.2, Quantum: 100 * time.Millisecond}

func newRun(t *testing.T, failRate float64) *run {
	t.Helper()
	return newScriptedRun(t, mockmail.Config{FailRate: failRate, Seed: 1})
}

func newScriptedRun(t *testing.T, mc mockmail.Config) *run {
	t.Helper()
	m, err := mockmail.New(mc)
	require.NoError(t, err)
	srv := httptest.NewServer(m)
	t.Cleanup(srv.Close)
	return &run{mock: m, cfg: app.Config{
		Store:   app.StoreConfig{URL: "file:" + filepath.Join(t.TempDir(), "ordermail.db")},
		Mail:    mailer.Config{URL: srv.URL, Timeout: 5 * time.Second},
		Watcher: watcher.Config{Workers: 8, Policy: fast},
		Timer:   timer.Config{Interval: 50 * time.Millisecond, Quantum: fast.Quantum},
	}}
}

// start starts the real fx app and returns its store.
func (r *run) start(t *testing.T, populate ...any) (*fx.App, store.Store) {
	t.Helper()
	require.NoError(t, r.cfg.Validate())
	var st store.Store
	a := app.New(r.cfg, quiet, fx.Populate(append(populate, &st)...))
	require.NoError(t, a.Err())
	require.NoError(t, a.Start(context.Background()))
	return a, st
}

func stop(t *testing.T, a *fx.App) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	require.NoError(t, a.Stop(ctx))
}

// placeOrders writes n orders as initiated, then marks each paid, as the
// sample's manual test does, and starts retries.
func placeOrders(t *testing.T, st store.Store, n int) []string {
	t.Helper()
	ctx := context.Background()
	docs := fixtures.Generate(n, 42)
	require.NoError(t, fixtures.Load(ctx, st, order.Inbound, docs))
	keys := make([]string, n)
	for i, d := range docs {
		paid, err := order.SetPaymentStatus(d.Value, order.StatusPaid)
		require.NoError(t, err)
		_, err = st.Upsert(ctx, order.Inbound, d.Key, paid)
		require.NoError(t, err)
		keys[i] = d.Key
	}
	_, err := st.Upsert(ctx, order.Retry, order.ControlKey, []byte(`{}`))
	require.NoError(t, err)
	return keys
}

func counts(t *testing.T, st store.Store) store.Counts {
	t.Helper()
	c, err := st.Counts(context.Background())
	require.NoError(t, err)
	return c
}

func waitAllConfirmed(t *testing.T, st store.Store, n int) {
	t.Helper()
	require.Eventually(t, func() bool {
		c := counts(t, st)
		return c.OrdersPaid == n && c.OrdersConfirmed == n && c.RetryDocs == 0
	}, 90*time.Second, 20*time.Millisecond, "last counts: %+v", counts(t, st))
}

// assertDeliveredOnce checks every order got exactly one delivery, under its
// own idempotency key.
func assertDeliveredOnce(t *testing.T, m *mockmail.Server, keys []string) {
	t.Helper()
	want := make(map[string]int, len(keys))
	for _, k := range keys {
		want[order.IdempotencyKey(k)] = 1
	}
	assert.Equal(t, want, m.Delivered())
	st := m.Stats()
	assert.Equal(t, len(keys), st.Deliveries)
	assert.Zero(t, st.DuplicateRequests)
	assert.Equal(t, st.Requests, st.Deliveries+st.Failures, "every request is accounted for")
}

func TestEndToEndHalfTheSendsFail(t *testing.T) {
	r := newRun(t, 0.5)
	a, st := r.start(t)
	keys := placeOrders(t, st, 300)
	waitAllConfirmed(t, st, 300)
	stop(t, a)

	assertDeliveredOnce(t, r.mock, keys)
	assert.Greater(t, r.mock.Stats().Failures, 100, "at 50%% failures the retry path was exercised")
	// Only the control document is left in retry.
	st2, err := app.OpenStore(context.Background(), r.cfg.Store, quiet)
	require.NoError(t, err)
	defer st2.Close()
	_, err = st2.Get(context.Background(), order.Retry, order.ControlKey)
	require.NoError(t, err)
	assert.Zero(t, counts(t, st2).RetryDocs)
}

func TestRestartInTheMiddleLosesNothing(t *testing.T) {
	r := newRun(t, 0.5)
	a, st := r.start(t)
	keys := placeOrders(t, st, 300)
	require.Eventually(t, func() bool { return counts(t, st).OrdersConfirmed >= 100 }, 60*time.Second, 5*time.Millisecond)
	stop(t, a)

	mid := r.mock.Stats()
	st1, err := app.OpenStore(context.Background(), r.cfg.Store, quiet)
	require.NoError(t, err)
	c := counts(t, st1)
	require.NoError(t, st1.Close())
	require.Less(t, c.OrdersConfirmed, 300, "the stop came in the middle of the run")
	t.Logf("stopped at %d/300 confirmed, %d retry documents, mock %+v", c.OrdersConfirmed, c.RetryDocs, mid)

	a2, st2 := r.start(t)
	waitAllConfirmed(t, st2, 300)
	stop(t, a2)
	assertDeliveredOnce(t, r.mock, keys)
}

func TestConfigValidateNamesTheSetting(t *testing.T) {
	good := app.Config{Store: app.StoreConfig{URL: "file:x.db"}, Mail: mailer.Config{URL: "http://localhost:9080"}}
	require.NoError(t, good.Validate())
	tests := []struct {
		give func(*app.Config)
		want string
	}{
		{func(c *app.Config) { c.Store.URL = "postgres://x" }, "store:"},
		{func(c *app.Config) { c.Store.URL = "file:" }, "store:"},
		{func(c *app.Config) { c.Store.URL = "couchbase://db" }, "cb-username"},
		{func(c *app.Config) {
			c.Store = app.StoreConfig{URL: "couchbase://db"}
			c.Store.Couchbase.Username = "u"
		}, "cb-password"},
		{func(c *app.Config) { c.Mail.URL = "" }, "mail-url"},
		{func(c *app.Config) { c.Watcher.Workers = -1 }, "workers"},
		{func(c *app.Config) { c.Timer.Interval = time.Millisecond }, "timer-interval"},
	}
	for i, tt := range tests {
		c := good
		tt.give(&c)
		assert.ErrorContains(t, c.Validate(), tt.want, fmt.Sprint(i))
	}
}
