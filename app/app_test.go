package app_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ordermail/ordermail/app"
	"github.com/ordermail/ordermail/console"
	"github.com/ordermail/ordermail/fixtures"
	"github.com/ordermail/ordermail/internal/later"
	"github.com/ordermail/ordermail/mailer"
	"github.com/ordermail/ordermail/mailer/mockmail"
	"github.com/ordermail/ordermail/order"
	"github.com/ordermail/ordermail/store"
	"github.com/ordermail/ordermail/store/couchbase"
	"github.com/ordermail/ordermail/store/couchbase/cbtest"
	"github.com/ordermail/ordermail/timer"
	"github.com/ordermail/ordermail/watcher"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/fx"
	"go.uber.org/fx/fxevent"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

type run struct {
	cfg    app.Config
	mock   *mockmail.Server
	prefix string       // of every key this run writes: a shared cluster holds others
	log    *slog.Logger // the app's; quiet unless a test reads it
}

// fast is a policy that retries within milliseconds and never gives up.
var fast = order.Policy{Backoff: order.BackoffExponential, MinDelay: 10 * time.Millisecond, MaxDelay: 100 * time.Millisecond,
	Jitter: 0.2, Quantum: 100 * time.Millisecond}

// backend is a store the end-to-end scenarios run on.
type backend struct {
	name  string
	store func(t testing.TB) app.StoreConfig // skips when it cannot run here
}

var backends = []backend{
	{"embedded", func(t testing.TB) app.StoreConfig {
		return app.StoreConfig{URL: "file:" + filepath.Join(t.TempDir(), "ordermail.db")}
	}},
	{"couchbase-1node", cbtestCluster(1)},
	{"couchbase-3nodes", cbtestCluster(3)},
	{"couchbase", couchbaseFromEnv},
}

// cbtestCluster is the project's Couchbase test server with nodes nodes,
// set up by `ordermail setup`'s code.
func cbtestCluster(nodes int) func(t testing.TB) app.StoreConfig {
	return func(t testing.TB) app.StoreConfig {
		sc, _ := startCBTest(t, nodes)
		return sc
	}
}

// startCBTest starts a Couchbase test server and sets it up.
func startCBTest(t testing.TB, nodes int) (app.StoreConfig, *cbtest.Server) {
	{
		srv := cbtest.Start(t, cbtest.Options{Nodes: nodes, VBuckets: 64})
		// No operation should time out here: a generous bound, for a
		// machine whose cores are all busy.
		sc := app.StoreConfig{URL: srv.ConnStr(), Couchbase: couchbase.Config{
			Username: srv.Username(), Password: srv.Password(), Timeout: 30 * time.Second,
			// The tests wait on the counts: served fresh enough that a
			// wait does not sit out a cache (5s each, before).
			CountsTTL: 200 * time.Millisecond, OrderCountsTTL: 200 * time.Millisecond,
		}}
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
		defer cancel()
		require.NoError(t, couchbase.Setup(ctx, sc.CouchbaseConfig(), couchbase.SetupOptions{}, quiet))
		return sc, srv
	}
}

// couchbaseFromEnv is the cluster ORDERMAIL_TEST_COUCHBASE names, set up.
func couchbaseFromEnv(t testing.TB) app.StoreConfig {
	conn := os.Getenv("ORDERMAIL_TEST_COUCHBASE")
	if conn == "" {
		t.Skip("no Couchbase cluster: `docker compose up -d couchbase couchbase-init`, then " +
			"ORDERMAIL_TEST_COUCHBASE=couchbase://localhost go test ./... " +
			"(ORDERMAIL_TEST_COUCHBASE_USERNAME and _PASSWORD default to Administrator and password)")
	}
	sc := app.StoreConfig{URL: conn, Couchbase: couchbase.Config{
		Username:       envOr("ORDERMAIL_TEST_COUCHBASE_USERNAME", "Administrator"),
		Password:       envOr("ORDERMAIL_TEST_COUCHBASE_PASSWORD", "password"),
		OrderCountsTTL: 5 * time.Second,
	}}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	require.NoError(t, couchbase.Setup(ctx, sc.CouchbaseConfig(), couchbase.SetupOptions{}, quiet))
	return sc
}

func envOr(name, def string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return def
}

func newRun(t *testing.T, failRate float64) *run {
	t.Helper()
	return newScriptedRun(t, mockmail.Config{FailRate: failRate, Seed: 1})
}

func newScriptedRun(t *testing.T, mc mockmail.Config) *run {
	t.Helper()
	return newRunOn(t, backends[0], mc)
}

func newRunOn(t testing.TB, b backend, mc mockmail.Config) *run {
	t.Helper()
	sc := b.store(t)
	m, err := mockmail.New(mc)
	require.NoError(t, err)
	srv := httptest.NewServer(m)
	t.Cleanup(srv.Close)
	id := fmt.Sprintf("%s_%d_", strings.ReplaceAll(t.Name(), "/", "_"), time.Now().UnixNano())
	return &run{mock: m, prefix: id, log: quiet, cfg: app.Config{
		Store: sc,
		Mail:  mailer.Config{URL: srv.URL, Timeout: 5 * time.Second},
		// The default start (the feed's beginning) on a store of its own;
		// from now on a shared cluster, not to read everyone's history.
		Watcher: watcher.Config{Workers: 8, Policy: fast, FeedName: "e2e_" + id, FromNow: sc.IsCouchbase()},
		Timer:   timer.Config{Interval: 50 * time.Millisecond, Quantum: fast.Quantum},
	}}
}

// start starts the real fx app and returns its store.
func (r *run) start(t testing.TB, populate ...any) (*fx.App, store.Store) {
	t.Helper()
	require.NoError(t, r.cfg.Validate())
	var st store.Store
	a := app.New(context.Background(), r.cfg, r.log, fx.Populate(append(populate, &st)...))
	require.NoError(t, a.Err())
	require.NoError(t, a.Start(context.Background()))
	return a, st
}

func stop(t testing.TB, a *fx.App) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	require.NoError(t, a.Stop(ctx))
}

// placeOrders writes n orders as initiated, then marks each paid, as the
// sample's manual test does, and starts retries.
func (r *run) placeOrders(t testing.TB, st store.Store, n int) []string {
	t.Helper()
	ctx := context.Background()
	docs := fixtures.Generate(n, 42)
	keys := make([]string, n)
	// Written as an order system would, created and then paid, in batches
	// of one transaction each.
	var batch []store.Write
	flush := func() {
		_, err := st.Apply(ctx, batch)
		require.NoError(t, err)
		batch = batch[:0]
	}
	for i, d := range docs {
		keys[i] = r.prefix + d.Key
		batch = append(batch, store.Write{Op: store.OpUpsert, Collection: order.Inbound, Key: keys[i], Value: d.Value})
		if len(batch) == 500 {
			flush()
		}
	}
	for i, d := range docs {
		paid, err := order.SetPaymentStatus(d.Value, order.StatusPaid)
		require.NoError(t, err)
		batch = append(batch, store.Write{Op: store.OpUpsert, Collection: order.Inbound, Key: keys[i], Value: paid})
		if len(batch) == 500 {
			flush()
		}
	}
	batch = append(batch, store.Write{Op: store.OpUpsert, Collection: order.Retry, Key: order.ControlKey, Value: []byte(`{}`)})
	flush()
	return keys
}

// counts reads the store's counts. The test helpers that read the store are
// polled by Eventually, where a failure must not end the test: an error is
// logged and reads as "not yet" (zero values), and an assertion on them
// fails where it is not polled.
func counts(t testing.TB, st store.Store) store.Counts {
	t.Helper()
	c, err := st.Counts(context.Background())
	if err != nil {
		t.Logf("counts: %v", err)
	}
	c.OrdersCountedAt = time.Time{} // Couchbase's; the tests compare the numbers
	return c
}

// progress counts, among keys, the confirmed orders and the retry documents.
// progress counts keys' orders confirmed and retry documents; ok is false
// when a state could not be read (logged): the counts then say nothing,
// and a wait on them must not take them for an answer.
func progress(t testing.TB, st store.Store, keys []string) (confirmedN, retries int, ok bool) {
	t.Helper()
	ctx := context.Background()
	for _, k := range keys {
		state, err := st.State(ctx, k)
		if err != nil {
			t.Logf("state of %s: %v", k, err)
			return 0, 0, false
		}
		if o, err := order.DecodeOrder(state.Order.Value); err == nil && o.ConfirmationEmailSent {
			confirmedN++
		}
		if state.Retry.Found() {
			retries++
		}
	}
	return confirmedN, retries, true
}

func waitConfirmed(t testing.TB, st store.Store, keys []string) {
	t.Helper()
	require.Eventually(t, func() bool {
		// The store-wide count first: cheap, and never below ours.
		if counts(t, st).OrdersConfirmed < len(keys) {
			return false
		}
		c, r, ok := progress(t, st, keys)
		return ok && c == len(keys) && r == 0
	}, 120*time.Second, 50*time.Millisecond, "not all of %d orders confirmed: %v", len(keys), later.Value(func() any {
		c, r, ok := progress(t, st, keys)
		return fmt.Sprintf("%d confirmed, %d retry documents (read: %v)", c, r, ok)
	}))
}

// waitAllConfirmed also checks the store-wide counts, on a store of our own:
// on Couchbase they are served from a cache for a while (CountsTTL), so
// they are waited for too.
func waitAllConfirmed(t testing.TB, st store.Store, keys []string) {
	t.Helper()
	waitConfirmed(t, st, keys)
	want := store.Counts{OrdersPaid: len(keys), OrdersConfirmed: len(keys)}
	var c store.Counts
	if !assert.Eventually(t, func() bool { c = counts(t, st); return c == want }, 30*time.Second, 20*time.Millisecond) {
		t.Fatalf("store-wide counts %+v, want %+v", c, want)
	}
}

// assertDeliveredOnce checks every order got exactly one delivery, under its
// own idempotency key, and no request was made again after its delivery.
func assertDeliveredOnce(t testing.TB, m *mockmail.Server, keys []string) {
	t.Helper()
	assertOneDeliveryEach(t, m, keys)
	assert.Zero(t, m.Stats().DuplicateRequests)
}

// assertOneDeliveryEach checks every order got exactly one delivery, under
// its own idempotency key; a request made again after it (its answer came
// after the client's timeout) is answered as a replay, and allowed.
func assertOneDeliveryEach(t testing.TB, m *mockmail.Server, keys []string) {
	t.Helper()
	want := make(map[string]int, len(keys))
	for _, k := range keys {
		want[k] = 1
	}
	delivered := m.Delivered() // answers of 200 by key, replays counted
	keysOf := map[string]int{}
	for k := range delivered {
		keysOf[order.OrderKeyOf(k)]++
	}
	assert.Equal(t, want, keysOf, "one idempotency key delivered per order")
	st := m.Stats()
	assert.Equal(t, len(keys), st.Deliveries, "distinct keys delivered")
	assert.Equal(t, st.Requests, st.Deliveries+st.Failures+st.DuplicateRequests, "every request is accounted for")
}

func TestEndToEndHalfTheSendsFail(t *testing.T) {
	for _, b := range backends {
		t.Run(b.name, func(t *testing.T) {
			r := newRunOn(t, b, mockmail.Config{FailRate: 0.5, Seed: 1})
			a, st := r.start(t)
			keys := r.placeOrders(t, st, 300)
			waitConfirmed(t, st, keys)
			stop(t, a)

			assertDeliveredOnce(t, r.mock, keys)
			assert.Greater(t, r.mock.Stats().Failures, 100, "at 50%% failures the retry path was exercised")
			// Only the control document is left in retry.
			st2, err := app.OpenStore(context.Background(), r.cfg.Store, quiet)
			require.NoError(t, err)
			defer st2.Close()
			_, err = st2.Get(context.Background(), order.Retry, order.ControlKey)
			require.NoError(t, err)
			_, retries, ok := progress(t, st2, keys)
			require.True(t, ok, "the states were read")
			assert.Zero(t, retries)
			if b.name != "couchbase" { // a store of its own
				assert.Equal(t, store.Counts{OrdersPaid: 300, OrdersConfirmed: 300}, counts(t, st2))
			}
		})
	}
}

func TestRestartInTheMiddleLosesNothing(t *testing.T) {
	for _, b := range backends {
		t.Run(b.name, func(t *testing.T) {
			// The email service answers 503 to every request past the
			// 200th until the restart: the stop comes in the middle of the
			// run however fast or slow the machine (half of the first
			// 200 fail too).
			var requests atomic.Int64
			var reopened atomic.Bool
			r := newRunOn(t, b, mockmail.Config{FailRate: 0.5, Seed: 1, Script: func(string, int) mockmail.Reply {
				if requests.Add(1) > 200 && !reopened.Load() {
					return mockmail.Reply{Status: http.StatusServiceUnavailable}
				}
				return mockmail.Reply{}
			}})
			a, st := r.start(t)
			keys := r.placeOrders(t, st, 300)
			require.Eventually(t, func() bool { c, _, ok := progress(t, st, keys); return ok && c >= 50 }, 60*time.Second, 5*time.Millisecond,
				"50 of 300 confirmed before the stop; confirmed: %v", later.Value(func() any { c, _, _ := progress(t, st, keys); return c }))
			stop(t, a)

			mid := r.mock.Stats()
			st1, err := app.OpenStore(context.Background(), r.cfg.Store, quiet)
			require.NoError(t, err)
			confirmedN, retries, ok := progress(t, st1, keys)
			require.True(t, ok, "the states were read")
			require.NoError(t, st1.Close())
			require.Less(t, confirmedN, 300, "the stop came in the middle of the run")
			t.Logf("stopped at %d/300 confirmed, %d retry documents, mock %+v", confirmedN, retries, mid)

			reopened.Store(true)
			a2, st2 := r.start(t)
			waitConfirmed(t, st2, keys)
			stop(t, a2)
			assertDeliveredOnce(t, r.mock, keys)
		})
	}
}

// A stop gives a send in flight its whole mail timeout: the watcher gives
// in-flight sends four fifths of the stop's time (watcher.Stop), which
// fell short of a mail timeout above 20s (a 38s send under a 40s timeout
// was abandoned at 36s, and its order sent again after the restart).
func TestAStopWaitsOutTheMailTimeout(t *testing.T) {
	for _, mt := range []time.Duration{0, 10 * time.Second, 40 * time.Second, 5 * time.Minute} {
		r := newRun(t, 0)
		r.cfg.Mail.Timeout = mt
		r.cfg.Watcher.ClaimTTL = 2*mt + time.Minute // longer than the send, as the config asks
		a, _ := r.start(t)
		stop(t, a)
		want := mt
		if mt == 0 {
			want = 10 * time.Second // the default
		}
		assert.GreaterOrEqual(t, a.StopTimeout()*4/5, want, "mail timeout %s", mt)
	}
}

func TestConfigValidateNamesTheSetting(t *testing.T) {
	good := app.Config{Store: app.StoreConfig{URL: "file:x.db"}, Mail: mailer.Config{URL: "http://localhost:9080"}}
	require.NoError(t, good.Validate())
	// 500 mails an hour on the embedded store, which claims nothing: the
	// last of 8 workers waits 57.6s for its turn, within the health
	// check's two minutes.
	quota := good
	quota.Mail.SendRate = 0.139
	require.NoError(t, quota.Validate())
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
		// 64 workers at half a send a second: the last waits 128s for its
		// turn, past the 1m claim (and the health check's bound on it).
		{func(c *app.Config) { c.Watcher.Workers, c.Mail.SendRate = 64, 0.5 }, "send-rate: 0.5 a second gives 64 workers turns up to 2m8s apart"},
		{func(c *app.Config) {
			c.Store.URL, c.Store.Couchbase.Username, c.Store.Couchbase.Password = "couchbase://db", "u", "p"
			c.Mail.SendRate = 0.139 // 500 mails an hour: 8 workers' turns 57.6s apart, past the 1m claim with the send
		}, "send-rate: 0.139 a second gives 8 workers turns up to 57.554s apart, which with mail-timeout 10s is not within claim-ttl 1m0s"},
		{func(c *app.Config) { c.Timer.Interval = time.Millisecond }, "timer-interval"},
		{func(c *app.Config) { c.Watcher.Workers = 65 }, "mail-conns: 64 is fewer than workers 65"},
		{func(c *app.Config) { c.Watcher.Workers, c.Mail.Conns = 16, 8 }, "give --mail-conns 16 or more"},
	}
	for i, tt := range tests {
		c := good
		tt.give(&c)
		assert.ErrorContains(t, c.Validate(), tt.want, fmt.Sprint(i))
	}
}

// byOrder adds up a per-idempotency-key map of the mock by order key.
func byOrder(perKey map[string]int) map[string]int {
	out := make(map[string]int, len(perKey))
	for k, n := range perKey {
		out[order.OrderKeyOf(k)] += n
	}
	return out
}

// A build that fails after the store opened (here the console's token file
// is unreadable) closes the store: no stop hook would, and its writer, its
// lock and its -wal file stayed for the life of the process (the demo, a
// test).
func TestAFailedBuildClosesTheStore(t *testing.T) {
	r := newScriptedRun(t, mockmail.Config{})
	dir := t.TempDir()
	r.cfg.Store = app.StoreConfig{URL: "file:" + filepath.Join(dir, "o.db")}
	r.cfg.Console = console.Config{Listen: "127.0.0.1:0", TokenFile: filepath.Join(dir, "no-such-token")}
	a := app.New(context.Background(), r.cfg, r.log)
	require.Error(t, a.Err())
	require.FileExists(t, filepath.Join(dir, "o.db"), "the store was opened")
	assert.NoFileExists(t, filepath.Join(dir, "o.db-wal"), "closed, its log checkpointed and removed")
}

// The stop watch names the part whose stop is under way, for a stop that
// runs out of time to say which part was still stopping.
func TestStopWatchNamesThePartStopping(t *testing.T) {
	w := &app.StopWatch{Logger: fxevent.NopLogger}
	assert.Empty(t, w.Stopping())
	w.LogEvent(&fxevent.OnStopExecuting{FunctionName: "github.com/ordermail/ordermail/store/embedded.(*Store).Close-fm()"})
	assert.Equal(t, "store/embedded.(*Store).Close", w.Stopping())
	w.LogEvent(&fxevent.OnStopExecuted{FunctionName: "github.com/ordermail/ordermail/store/embedded.(*Store).Close-fm()"})
	assert.Empty(t, w.Stopping())
}

// The timer stops before the watcher (and starts after it): a tick while
// the watcher stops took the instance for a standby and gave the sweep
// lease up saying its breaker was open. Here the watcher's stop waits out
// sends the mock holds 500ms, while the timer ticks every 10ms.
func TestAStopLeavesTheSweepLeaseAsStopped(t *testing.T) {
	r := newScriptedRun(t, mockmail.Config{Latency: 500 * time.Millisecond})
	r.cfg.Timer.Interval = 10 * time.Millisecond
	// With the console, as the demo runs (it took the timer's hooks ahead
	// of the watcher's).
	r.cfg.Console = console.Config{Listen: "127.0.0.1:0"}
	var cons *console.Console
	a, st := r.start(t, &cons)
	r.placeOrders(t, st, 8) // and starts retries: the timer sweeps, holding the lease
	var last string
	require.Eventually(t, func() bool {
		h, err := timer.ReadSweeper(context.Background(), st)
		last = fmt.Sprint(h, err)
		return err == nil && h.Owner != "" && r.mock.Stats().Requests > 0
	}, 30*time.Second, 5*time.Millisecond, "the timer holds the lease and sends are out; last read: %v", later.Value(func() any { return last }))
	stop(t, a)
	st, err := app.OpenStore(context.Background(), r.cfg.Store, quiet) // the service's closed with it
	require.NoError(t, err)
	defer st.Close()
	h, err := timer.ReadSweeper(context.Background(), st)
	require.NoError(t, err)
	assert.Equal(t, timer.LeftStopped, h.Why, "%+v", h)
}
