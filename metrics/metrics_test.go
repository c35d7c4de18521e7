package metrics_test

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ordermail/ordermail/internal/later"
	"github.com/ordermail/ordermail/internal/syncbuf"
	"github.com/ordermail/ordermail/mailer"
	"github.com/ordermail/ordermail/mailer/mockmail"
	"github.com/ordermail/ordermail/metrics"
	"github.com/ordermail/ordermail/order"
	"github.com/ordermail/ordermail/store"
	"github.com/ordermail/ordermail/store/embedded"
	"github.com/ordermail/ordermail/timer"
	"github.com/ordermail/ordermail/watcher"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

// fast retries within milliseconds and never gives up.
var fast = order.Policy{Backoff: order.BackoffExponential, MinDelay: 10 * time.Millisecond, MaxDelay: 50 * time.Millisecond,
	Quantum: 50 * time.Millisecond}

const paidOrder = `{"email":"ann@example.com","paymentStatus":"paid","confirmationEmailSent":false}`

// rig is the service without fx: the real embedded store, the mock email
// service, the mailer, the watcher, the timer and the metrics.
type rig struct {
	st    store.Store
	mock  *mockmail.Server
	mail  *mailer.Client
	w     *watcher.Watcher
	t     *timer.Timer
	m     *metrics.Server
	logs  *syncbuf.Buffer // JSON, at debug
	watch bool            // the watcher was started
}

type rigConfig struct {
	mock    mockmail.Config
	mail    mailer.Config
	watcher watcher.Config
	timer   timer.Config
	metrics metrics.Config
	sender  watcher.Sender                // instead of the mailer
	wrap    func(store.Store) store.Store // the store the timer and the metrics see
}

func newRig(t *testing.T, rc rigConfig) *rig {
	t.Helper()
	st, err := embedded.Open(context.Background(), embedded.Config{Path: filepath.Join(t.TempDir(), "o.db")})
	require.NoError(t, err)
	t.Cleanup(func() { st.Close() })
	r := &rig{st: st, logs: &syncbuf.Buffer{}}
	log := slog.New(slog.NewJSONHandler(r.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	r.mock, err = mockmail.New(rc.mock)
	require.NoError(t, err)
	srv := httptest.NewServer(r.mock)
	t.Cleanup(srv.Close)
	rc.mail.URL = srv.URL
	r.mail, err = mailer.New(rc.mail, log)
	require.NoError(t, err)
	var sender watcher.Sender = r.mail
	if rc.sender != nil {
		sender = rc.sender
	}
	var seen store.Store = st
	if rc.wrap != nil {
		seen = rc.wrap(st)
	}
	if rc.watcher.Policy == (order.Policy{}) {
		rc.watcher.Policy = fast
	}
	rc.watcher.SingleConsumer, rc.watcher.AtomicOutcomes = true, true
	r.w, err = watcher.New(rc.watcher, st, sender, log, nil)
	require.NoError(t, err)
	if rc.timer.Interval == 0 {
		rc.timer.Interval = 20 * time.Millisecond
	}
	r.t, err = timer.New(rc.timer, seen, log, nil)
	require.NoError(t, err)
	r.t.SetGate(r.mail) // as the app does
	r.m, err = metrics.New(rc.metrics, r.w, r.t, r.mail, seen, log)
	require.NoError(t, err)
	return r
}

// start starts the timer, the metrics and, with watch, the watcher; the
// test's cleanup stops them.
func (r *rig) start(t *testing.T, watch bool) {
	t.Helper()
	r.t.Start()
	require.NoError(t, r.m.Start(context.Background()))
	if watch {
		require.NoError(t, r.w.Start(context.Background()))
	}
	r.m.Started() // as the app's last start hook does
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if watch {
			assert.NoError(t, r.w.Stop(ctx))
		}
		assert.NoError(t, r.m.Stop(ctx))
		assert.NoError(t, r.t.Stop(ctx))
	})
}

func (r *rig) put(t *testing.T, coll, key, value string) {
	t.Helper()
	_, err := r.st.Upsert(context.Background(), coll, key, []byte(value))
	require.NoError(t, err)
}

func (r *rig) armRetries(t *testing.T, control string) {
	t.Helper()
	r.put(t, order.Retry, order.ControlKey, control)
}

// scrape reads the ordermail_ samples as "name{labels}" -> value.
func scrape(t *testing.T, h http.Handler) map[string]float64 {
	t.Helper()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/metrics", nil))
	if rec.Code != http.StatusOK { // polled: no require
		t.Logf("scrape: %d %s", rec.Code, rec.Body.String())
		return nil
	}
	out := map[string]float64{}
	sc := bufio.NewScanner(rec.Body)
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, "ordermail_") {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			t.Logf("scrape: %q: %v", line, err)
			continue
		}
		out[line[:i]] = v
	}
	return out
}

func get(h http.HandlerFunc) (int, map[string]any) {
	rec := httptest.NewRecorder()
	h(rec, httptest.NewRequest(http.MethodGet, "/", nil))
	var body map[string]any
	json.Unmarshal(rec.Body.Bytes(), &body)
	return rec.Code, body
}

// confirmed says whether the order key is confirmed; polled, so no require.
func confirmed(t *testing.T, st store.Store, key string) bool {
	d, err := st.Get(context.Background(), order.Inbound, key)
	if err != nil {
		return false
	}
	o, err := order.DecodeOrder(d.Value)
	return err == nil && o.ConfirmationEmailSent
}

func TestMetricsAfterASmallRun(t *testing.T) {
	r := newRig(t, rigConfig{
		mock: mockmail.Config{Script: func(key string, n int) mockmail.Reply {
			if strings.Contains(key, "m2") && n == 1 {
				return mockmail.Reply{Status: http.StatusServiceUnavailable}
			}
			return mockmail.Reply{Status: http.StatusOK}
		}},
		metrics: metrics.Config{RefreshInterval: 20 * time.Millisecond, Version: "v1.2.3"},
	})
	r.armRetries(t, `{}`)
	for _, k := range []string{"m1", "m2", "m3"} {
		r.put(t, order.Inbound, k, paidOrder)
	}
	r.put(t, order.Inbound, "m_no_email", `{"paymentStatus":"paid"}`)
	r.start(t, true)

	h := r.m.Handler()
	var v map[string]float64
	// The store's counts show an outcome once it is committed; the
	// watcher's counters move a moment later, after the write returns:
	// wait for both, or a busy machine scrapes in between.
	if !assert.Eventually(t, func() bool {
		v = scrape(t, h)
		return v["ordermail_orders_confirmed"] == 3 && v["ordermail_dead_letters"] == 1 && v["ordermail_retry_documents"] == 0 &&
			v["ordermail_sweep_duration_seconds_count"] > 0 &&
			v[`ordermail_outcomes_total{outcome="sent"}`]+v[`ordermail_outcomes_total{outcome="retry"}`] >= 4 &&
			v[`ordermail_dead_lettered_total{reason="no_email"}`] >= 1 &&
			v["ordermail_event_handling_duration_seconds_count"] >= 6
	}, 20*time.Second, 10*time.Millisecond) {
		t.Fatalf("last scrape: %v", v)
	}

	want := map[string]float64{
		`ordermail_sends_total{status_class="2xx"}`:                 3,
		`ordermail_sends_total{status_class="5xx"}`:                 1,
		`ordermail_sends_total{status_class="4xx"}`:                 0,
		`ordermail_sends_total{status_class="3xx"}`:                 0,
		`ordermail_sends_total{status_class="none"}`:                0,
		`ordermail_sends_held_total{why="breaker"}`:                 0,
		`ordermail_sends_held_total{why="config"}`:                  0,
		`ordermail_sends_held_total{why="rate"}`:                    0,
		`ordermail_outcomes_total{outcome="sent"}`:                  3,
		`ordermail_outcomes_total{outcome="retry"}`:                 1,
		`ordermail_outcomes_total{outcome="dead_letter"}`:           0,
		`ordermail_dead_lettered_total{reason="no_email"}`:          1,
		`ordermail_dead_lettered_total{reason="poison_event"}`:      0,
		`ordermail_send_duration_seconds_count{result="sent"}`:      3,
		`ordermail_send_duration_seconds_count{result="transient"}`: 1,
		`ordermail_send_duration_seconds_count{result="permanent"}`: 0,
		`ordermail_send_duration_seconds_count{result="config"}`:    0,
		`ordermail_send_duration_seconds_count{result="invalid"}`:   0,
		"ordermail_sends_succeeded_total":                           3,
		"ordermail_send_failures_total":                             1,
		"ordermail_timer_sweep_errors_total":                        0,
		"ordermail_retries_paused":                                  0,
		"ordermail_timer_active":                                    1,
		"ordermail_timer_held":                                      0,
		"ordermail_store_up":                                        1,
		"ordermail_orders_paid":                                     4,
		"ordermail_retry_documents":                                 0,
		"ordermail_retry_documents_due":                             0,
		"ordermail_retry_documents_flagged":                         0,
		"ordermail_oldest_due_retry_age_seconds":                    0,
		"ordermail_breaker_open":                                    0,
		"ordermail_mail_misconfigured":                              0,
	}
	for name, value := range want {
		got, ok := v[name]
		if assert.True(t, ok, "%s missing", name) {
			assert.Equal(t, value, got, name)
		}
	}
	for _, name := range []string{"ordermail_event_handling_duration_seconds_count", "ordermail_sweep_duration_seconds_count",
		"ordermail_timer_ticks_total", "ordermail_timer_last_sweep_timestamp_seconds", `ordermail_send_duration_seconds_bucket{result="sent",le="+Inf"}`} {
		assert.Positive(t, v[name], name)
	}
	assert.GreaterOrEqual(t, v["ordermail_event_handling_duration_seconds_count"], float64(6), "4 first events, the retry's, the own writes")
	assert.InDelta(t, float64(time.Now().Unix()), v["ordermail_timer_last_sweep_timestamp_seconds"], 60)
	assert.Contains(t, v, "ordermail_backlog_age_seconds")
	assert.Contains(t, v, "ordermail_feed_lag_changes", "the embedded feed's lag, as the reader sees it")
	var build string
	for name := range v {
		if strings.HasPrefix(name, "ordermail_build_info{") {
			build = name
		}
	}
	assert.Regexp(t, `^ordermail_build_info\{goversion="go[^"]+",revision="[^"]+",version="v1.2.3"\}$`, build)
	assert.Equal(t, 1.0, v[build])

	code, body := get(r.m.Healthz)
	assert.Equal(t, http.StatusOK, code, "%v", body)
	code, body = get(r.m.Readyz)
	assert.Equal(t, http.StatusOK, code)
	assert.Equal(t, map[string]any{"status": "ready", "store": "up", "store_read_ago": body["store_read_ago"], "role": "active", "feed": "running"}, body)
}

// TestHeldSendsAreNotRequests: sends the breaker holds back are counted as
// held, not as requests, and their retries say retries are paused.
func TestHeldSendsAreNotRequests(t *testing.T) {
	r := newRig(t, rigConfig{
		mock:    mockmail.Config{FailRate: 1},
		mail:    mailer.Config{BreakerFailures: 2, BreakerCooldown: time.Hour},
		watcher: watcher.Config{Workers: 1},
	})
	r.start(t, true) // no allow_retrys: paused
	h := r.m.Handler()
	require.Eventually(t, func() bool { return scrape(t, h)["ordermail_retries_paused"] == 1 }, 30*time.Second, 5*time.Millisecond,
		"ordermail_retries_paused 1; it is %v", later.Value(func() any { return scrape(t, h)["ordermail_retries_paused"] }))
	assert.Equal(t, 0.0, scrape(t, h)["ordermail_timer_active"], "paused: nobody sweeps")
	for i := range 6 {
		r.put(t, order.Inbound, "h"+strconv.Itoa(i), paidOrder)
	}

	var v map[string]float64
	// Every order's send observed (a request or one held back), and its
	// outcome. A scrape is no snapshot: the registry collects its metrics
	// one after the other, on goroutines of its own, so one that read the
	// held sends before the last three were held can read the outcomes
	// after theirs were written (6 outcomes beside 2 requests and 1 held,
	// once in CI). Waiting for both until they agree reads final values.
	require.Eventually(t, func() bool {
		v = scrape(t, h)
		sends := v[`ordermail_sends_total{status_class="5xx"}`]
		for _, why := range []string{"breaker", "config", "rate"} {
			sends += v[`ordermail_sends_held_total{why="`+why+`"}`]
		}
		return v[`ordermail_outcomes_total{outcome="retry"}`] >= 6 && sends == 6
	}, 20*time.Second, 10*time.Millisecond, "last scrape: %v", later.Value(func() any { return v }))
	assert.Equal(t, 6.0, v[`ordermail_outcomes_total{outcome="retry"}`])
	requests := float64(r.mock.Stats().Requests)
	assert.Equal(t, 2.0, requests, "the breaker opened after two")
	assert.Equal(t, requests, v[`ordermail_sends_total{status_class="5xx"}`])
	assert.Equal(t, 4.0, v[`ordermail_sends_held_total{why="breaker"}`])
	assert.Equal(t, 2.0, v[`ordermail_send_duration_seconds_count{result="transient"}`], "held sends are not timed as calls")
	assert.Equal(t, requests, v["ordermail_send_failures_total"])
	assert.Equal(t, 1.0, v["ordermail_breaker_open"])
	st := r.w.Stats()
	assert.Equal(t, int64(2), st.Sends)
	assert.Equal(t, int64(4), st.Held)

	lines := jsonLines(t, r.logs)
	var held, paused int
	for _, l := range lines {
		msg, _ := l["msg"].(string)
		if strings.HasPrefix(msg, "send held back, retry scheduled") {
			held++
			assert.Equal(t, "breaker", l["held"])
		}
		if strings.Contains(msg, "retries are paused") {
			paused++
			assert.Equal(t, true, l["paused"], "%v", l)
		}
		assert.Falsef(t, l["attempt"] != nil && l["attempts"] != nil, "one line, attempt and attempts: %v", l)
	}
	assert.Equal(t, 4, held)
	assert.Equal(t, 6, paused, "a retry scheduled while paused says so")
	assert.Equal(t, 1, countMsg(lines, "circuit breaker open"), "one line when it opens")

	// Retries started while the breaker is open: this instance flags none,
	// which would only be held again, and says it does not sweep.
	r.put(t, order.Retry, order.ControlKey, `{}`)
	require.Eventually(t, func() bool { v = scrape(t, h); return v["ordermail_timer_held"] == 1 }, 20*time.Second, 10*time.Millisecond,
		"last scrape: %v", later.Value(func() any { return v }))
	// A scrape's collectors run at once: the one that saw the role turn
	// to held may have met one that read it paused a moment before. The
	// role stays held (the breaker's cooldown is an hour): scrape again.
	v = scrape(t, h)
	assert.Equal(t, 1.0, v["ordermail_timer_held"])
	assert.Equal(t, 0.0, v["ordermail_timer_active"])
	assert.Equal(t, 0.0, v["ordermail_retries_paused"])
	assert.Equal(t, 0.0, v["ordermail_retry_documents_flagged"])
}

// TestOneLinePerStateChangeAndDurationsAsStrings: the breaker opening and
// closing and the retries being armed make one line each at info or above
// (none per order), and every duration in the JSON logs is a string.
func TestOneLinePerStateChangeAndDurationsAsStrings(t *testing.T) {
	// The first three requests fail, and open the breaker (one worker: in
	// a row); the probe after the cooldown succeeds, whenever it comes.
	var requests atomic.Int64
	r := newRig(t, rigConfig{
		mock: mockmail.Config{Script: func(string, int) mockmail.Reply {
			if requests.Add(1) <= 3 {
				return mockmail.Reply{Status: http.StatusServiceUnavailable}
			}
			return mockmail.Reply{Status: http.StatusOK}
		}},
		mail:    mailer.Config{BreakerFailures: 3, BreakerCooldown: 100 * time.Millisecond},
		watcher: watcher.Config{Workers: 1},
	})
	r.armRetries(t, `{"quantum":"40ms"}`)
	keys := make([]string, 20)
	for i := range keys {
		keys[i] = "s" + strconv.Itoa(i)
		r.put(t, order.Inbound, keys[i], paidOrder)
	}
	r.start(t, true)
	var left atomic.Int64
	require.Eventually(t, func() bool {
		n := 0
		for _, k := range keys {
			if !confirmed(t, r.st, k) {
				n++
			}
		}
		left.Store(int64(n))
		return n == 0 && r.mail.BreakerState() == "closed"
	}, 30*time.Second, 10*time.Millisecond, "every order confirmed and the breaker closed: %v unconfirmed, breaker %v",
		later.Value(func() any { return left.Load() }), later.Value(func() any { return r.mail.BreakerState() }))

	lines := jsonLines(t, r.logs)
	assert.Equal(t, 1, countMsg(lines, "circuit breaker open"))
	assert.Equal(t, 1, countMsg(lines, "circuit breaker closed"))
	assert.Equal(t, 1, countMsg(lines, "retries armed"))
	for _, l := range lines {
		if l["msg"] == "retries armed" {
			assert.Equal(t, "40ms", l["quantum"], "the settings in effect, from allow_retrys")
			assert.Equal(t, "20ms", l["interval"])
		}
	}
	// Above debug, only state changes: none names an order.
	for _, l := range lines {
		if l["level"] != "DEBUG" {
			assert.Nil(t, l["key"], "a line per order above debug: %v", l)
		}
	}
	durations := map[string]int{}
	for _, l := range lines {
		for _, k := range []string{"retry_in", "cooldown", "interval", "quantum", "probe_every", "heartbeat_age"} {
			if v, ok := l[k]; ok {
				_, isString := v.(string)
				assert.True(t, isString, "%s=%v (%T) in %v", k, v, v, l)
				durations[k]++
			}
		}
	}
	assert.Positive(t, durations["retry_in"])
	assert.Positive(t, durations["cooldown"])
	assert.Positive(t, durations["interval"])
}

func jsonLines(t *testing.T, b *syncbuf.Buffer) []map[string]any {
	t.Helper()
	var out []map[string]any
	for _, line := range strings.Split(strings.TrimSpace(b.String()), "\n") {
		var m map[string]any
		require.NoError(t, json.Unmarshal([]byte(line), &m), line)
		out = append(out, m)
	}
	return out
}

// countMsg counts the lines at info or above whose message starts with msg.
func countMsg(lines []map[string]any, msg string) int {
	n := 0
	for _, l := range lines {
		if m, _ := l["msg"].(string); strings.HasPrefix(m, msg) && l["level"] != "DEBUG" {
			n++
		}
	}
	return n
}

// countingStore counts the reads of the backlog figures and of the
// reasons; with block set, the counts wait until their context ends.
type countingStore struct {
	store.Store
	counts, backlogs, reasons atomic.Int32
	block                     atomic.Bool
	countedAt                 time.Time // the orders' count's time, as Couchbase gives it; zero: the store's own
}

func (c *countingStore) Counts(ctx context.Context) (store.Counts, error) {
	c.counts.Add(1)
	if c.block.Load() {
		<-ctx.Done()
		return store.Counts{}, ctx.Err()
	}
	n, err := c.Store.Counts(ctx)
	if !c.countedAt.IsZero() {
		n.OrdersCountedAt = c.countedAt
	}
	return n, err
}

// The paid and confirmed orders' count says when it was made: on
// Couchbase the last count that succeeded is served while the next ones
// fail, and the figures' own age (ordermail_backlog_age_seconds) stays
// fresh meanwhile; the embedded store counts them with the rest.
func TestTheOrdersCountSaysWhenItWasMade(t *testing.T) {
	for _, tt := range []struct {
		name      string
		countedAt time.Time
	}{
		{"embedded", time.Time{}},
		{"couchbase, counts failing since", time.Now().Add(-time.Hour).Truncate(time.Second)},
	} {
		t.Run(tt.name, func(t *testing.T) {
			r := newRig(t, rigConfig{
				metrics: metrics.Config{RefreshInterval: 10 * time.Millisecond},
				wrap:    func(st store.Store) store.Store { return &countingStore{Store: st, countedAt: tt.countedAt} },
			})
			r.start(t, false)
			h := r.m.Handler()
			var v map[string]float64
			if !assert.Eventually(t, func() bool {
				v = scrape(t, h)
				_, ok := v["ordermail_orders_counted_timestamp_seconds"]
				return ok
			}, 30*time.Second, 5*time.Millisecond) {
				t.Fatalf("last scrape: %v", v)
			}
			got := v["ordermail_orders_counted_timestamp_seconds"]
			if tt.countedAt.IsZero() {
				read := float64(r.m.Backlog().ReadAt.Unix())
				assert.InDelta(t, read, got, 5, "the figures' own time")
				return
			}
			assert.Equal(t, float64(tt.countedAt.Unix()), got)
			assert.Less(t, v["ordermail_backlog_age_seconds"], 600.0, "the figures fresh, the count an hour old")
		})
	}
}

func (c *countingStore) Backlog(ctx context.Context, now time.Time, quantum time.Duration) (store.Backlog, error) {
	c.backlogs.Add(1)
	return c.Store.Backlog(ctx, now, quantum)
}

func (c *countingStore) Reasons(ctx context.Context) ([]store.Tally, error) {
	c.reasons.Add(1)
	return c.Store.Reasons(ctx)
}

func TestAScrapeDoesNotCallTheStore(t *testing.T) {
	var cs *countingStore
	r := newRig(t, rigConfig{
		metrics: metrics.Config{RefreshInterval: time.Hour},
		wrap:    func(st store.Store) store.Store { cs = &countingStore{Store: st}; return cs },
	})
	r.put(t, order.Inbound, "o1", paidOrder)
	r.start(t, false)
	require.Eventually(t, func() bool { return r.m.Backlog().Checked }, 30*time.Second, 5*time.Millisecond, "the first refresh of the backlog")
	assert.Equal(t, int32(1), cs.counts.Load(), "the first refresh, at start")
	assert.Equal(t, int32(1), cs.backlogs.Load())
	h := r.m.Handler()
	for range 20 {
		v := scrape(t, h)
		assert.Equal(t, 1.0, v["ordermail_orders_paid"])
		get(r.m.Readyz)
	}
	assert.Equal(t, int32(1), cs.counts.Load(), "scrapes and probes read the cached figures")
	assert.Equal(t, int32(1), cs.backlogs.Load())
}

// The reasons are for people (the status, the console): on Couchbase
// their count reads every entry of the reasons' indexes, so the refresh
// that every instance runs all the time never asks for them.
func TestTheRefreshDoesNotReadTheReasons(t *testing.T) {
	var cs *countingStore
	r := newRig(t, rigConfig{
		metrics: metrics.Config{RefreshInterval: 5 * time.Millisecond},
		wrap:    func(st store.Store) store.Store { cs = &countingStore{Store: st}; return cs },
	})
	r.put(t, order.Inbound, "o1", paidOrder)
	r.start(t, false)
	require.Eventually(t, func() bool { return cs.backlogs.Load() >= 20 }, 30*time.Second, 5*time.Millisecond,
		"twenty refreshes")
	assert.Zero(t, cs.reasons.Load())
}

func TestAStoreThatHangsFailsReadinessNotTheScrape(t *testing.T) {
	var cs *countingStore
	r := newRig(t, rigConfig{
		metrics: metrics.Config{RefreshInterval: 10 * time.Millisecond, RefreshTimeout: 50 * time.Millisecond},
		wrap: func(st store.Store) store.Store {
			cs = &countingStore{Store: st}
			cs.block.Store(true)
			return cs
		},
	})
	r.start(t, false)
	h := r.m.Handler()
	require.Eventually(t, func() bool {
		code, body := get(r.m.Readyz)
		return code == http.StatusServiceUnavailable && body["status"] == "store_unreachable" && body["store"] == "down"
	}, 30*time.Second, 5*time.Millisecond, "readyz says the store is unreachable; it answers %v", answer(r.m.Readyz))
	// The store still hangs (its reads end only with their context, and a
	// scrape's has no deadline): a scrape that read it would never return.
	scraped := make(chan map[string]float64, 1)
	go func() { scraped <- scrape(t, h) }()
	var v map[string]float64
	select {
	case v = <-scraped:
	case <-time.After(30 * time.Second):
		t.Fatal("the scrape waits for the hanging store")
	}
	assert.Equal(t, 0.0, v["ordermail_store_up"])
	assert.NotContains(t, v, "ordermail_orders_paid", "never read: no figures rather than zeros")
	code, _ := get(r.m.Healthz)
	assert.Equal(t, http.StatusOK, code, "a store down is not a hung process")

	cs.block.Store(false)
	require.Eventually(t, func() bool {
		code, _ := get(r.m.Readyz)
		return code == http.StatusOK
	}, 30*time.Second, 5*time.Millisecond, "readyz ready again; it answers %v", answer(r.m.Readyz))
	// The line follows the figures, written once the lock is let go.
	require.Eventually(t, func() bool {
		return strings.Contains(r.logs.String(), "the store answers the backlog figures again")
	}, 30*time.Second, 5*time.Millisecond, "no line says the store answers again")
	assert.Equal(t, 1, countMsg(jsonLines(t, r.logs), "the store does not answer"))
	assert.Equal(t, 1, countMsg(jsonLines(t, r.logs), "the store answers the backlog figures again"))
}

// Once the store stops answering, the backlog figures are served as it
// last answered them: the age of the oldest due retry, counted on from a
// reading that no longer holds, paged for a retry long gone; and figures
// dropped would end their series, resetting the alerts' `for`. The
// figures' age and store_up say what happened.
func TestFiguresTheStoreNoLongerAnswersStandAsTheyWere(t *testing.T) {
	var cs *countingStore
	r := newRig(t, rigConfig{
		metrics: metrics.Config{RefreshInterval: 10 * time.Millisecond, RefreshTimeout: 50 * time.Millisecond},
		wrap: func(st store.Store) store.Store {
			cs = &countingStore{Store: st}
			return cs
		},
	})
	due := time.Now().Add(-10 * time.Minute).UnixMilli()
	r.put(t, order.Retry, "o1", fmt.Sprintf(`{"type":"confirmation","docId":"o1","attempt":1,"ts":%d,"nextAttemptAt":%d}`, due, due))
	r.start(t, false)
	h := r.m.Handler()
	var last atomic.Value
	up := func(want float64) func() bool {
		return func() bool {
			v := scrape(t, h)
			last.Store(fmt.Sprintf("store_up %v, oldest due age %v", v["ordermail_store_up"], v["ordermail_oldest_due_retry_age_seconds"]))
			return v["ordermail_store_up"] == want && v["ordermail_oldest_due_retry_age_seconds"] > 0
		}
	}
	lastScrape := later.Value(func() any { return last.Load() })
	require.Eventually(t, up(1), 30*time.Second, 5*time.Millisecond, "figures served; the last scrape: %v", lastScrape)

	cs.block.Store(true)
	require.Eventually(t, up(0), 30*time.Second, 5*time.Millisecond, "the store taken for down; the last scrape: %v", lastScrape)
	first := scrape(t, h)
	second := scrape(t, h)
	bl := r.m.Backlog()
	require.False(t, bl.Up)
	assert.Equal(t, bl.ReadAt.Sub(bl.OldestDue).Seconds(), second["ordermail_oldest_due_retry_age_seconds"], "the age as it was last read")
	assert.Equal(t, first["ordermail_oldest_due_retry_age_seconds"], second["ordermail_oldest_due_retry_age_seconds"])
	assert.LessOrEqual(t, first["ordermail_backlog_age_seconds"], second["ordermail_backlog_age_seconds"], "how old the figures are")
	for _, name := range []string{"ordermail_orders_paid", "ordermail_retry_documents", "ordermail_retry_documents_due", "ordermail_dead_letters"} {
		assert.Contains(t, second, name, "the series go on")
	}
	assert.Equal(t, 1.0, second["ordermail_retry_documents"])

	cs.block.Store(false)
	require.Eventually(t, up(1), 30*time.Second, 5*time.Millisecond, "figures again; the last scrape: %v", lastScrape)
}

// stallingStore hangs reads of allow_retrys, ignoring their context, while
// stall is set: a tick that never ends.
type stallingStore struct {
	store.Store
	mu    sync.Mutex
	stall chan struct{} // nil: no stall
}

func (s *stallingStore) Get(ctx context.Context, coll, key string) (store.Doc, error) {
	s.mu.Lock()
	stall := s.stall
	s.mu.Unlock()
	if stall != nil && key == order.ControlKey {
		<-stall
	}
	return s.Store.Get(ctx, coll, key)
}

func (s *stallingStore) set(on bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	switch {
	case on && s.stall == nil:
		s.stall = make(chan struct{})
	case !on && s.stall != nil:
		close(s.stall)
		s.stall = nil
	}
}

func TestHealthzFailsWhileTheTimerIsStuck(t *testing.T) {
	var ss *stallingStore
	r := newRig(t, rigConfig{
		wrap: func(st store.Store) store.Store { ss = &stallingStore{Store: st}; return ss },
	})
	defer ss.set(false) // before the timer stops: it waits for its tick
	r.start(t, true)
	ticks := r.t.Ticks()
	require.Eventually(t, func() bool { return r.t.Ticks() >= ticks+5 }, 30*time.Second, 5*time.Millisecond,
		"five ticks from %d; at %v", ticks, later.Value(func() any { return r.t.Ticks() }))
	code, body := get(r.m.Healthz)
	require.Equal(t, http.StatusOK, code, "%v", body)

	ss.set(true)
	require.Eventually(t, func() bool {
		code, body = get(r.m.Healthz)
		return code == http.StatusServiceUnavailable
	}, 30*time.Second, 10*time.Millisecond, "healthz fails while the timer stalls; it answers %v", answer(r.m.Healthz))
	assert.Equal(t, "stale", body["status"])
	stale, _ := body["stale"].([]any)
	require.Len(t, stale, 1, "%v", body)
	assert.Contains(t, stale[0], "timer: no tick finished for")

	ss.set(false)
	require.Eventually(t, func() bool {
		code, _ := get(r.m.Healthz)
		return code == http.StatusOK
	}, 30*time.Second, 10*time.Millisecond, "healthz passes again; it answers %v", answer(r.m.Healthz))
}

// blockingSender never answers until released, ignoring its context: a
// worker stuck on one event.
type blockingSender struct{ release chan struct{} }

func (b *blockingSender) Send(context.Context, string, []byte) error {
	<-b.release
	return nil
}

func TestHealthzFailsWhileAWorkerIsStuck(t *testing.T) {
	bs := &blockingSender{release: make(chan struct{})}
	r := newRig(t, rigConfig{
		sender:  bs,
		watcher: watcher.Config{Workers: 2, ClaimTTL: 50 * time.Millisecond}, // stuck after 100ms
	})
	released := false
	release := func() {
		if !released {
			close(bs.release)
			released = true
		}
	}
	defer release() // before the watcher stops: it waits for its workers
	r.start(t, true)
	code, body := get(r.m.Healthz)
	require.Equal(t, http.StatusOK, code, "%v", body)

	r.put(t, order.Inbound, "stuck", paidOrder)
	require.Eventually(t, func() bool {
		code, body = get(r.m.Healthz)
		return code == http.StatusServiceUnavailable
	}, 30*time.Second, 10*time.Millisecond, "healthz fails while a worker is stuck; it answers %v", answer(r.m.Healthz))
	stale, _ := body["stale"].([]any)
	require.Len(t, stale, 1, "%v", body)
	assert.Regexp(t, `^watcher: worker \d: no progress on "stuck"`, stale[0])

	release()
	require.Eventually(t, func() bool { return confirmed(t, r.st, "stuck") }, 30*time.Second, 5*time.Millisecond, "the stuck order confirmed once released")
	require.Eventually(t, func() bool {
		code, _ := get(r.m.Healthz)
		return code == http.StatusOK
	}, 30*time.Second, 10*time.Millisecond, "healthz passes again; it answers %v", answer(r.m.Healthz))
}

// While the service starts, and once its stop has begun, it cannot send:
// /readyz says so, where it answered ready with the feed "standby".
func TestReadyzWhileStartingAndStopping(t *testing.T) {
	t.Parallel()
	r := newRig(t, rigConfig{})
	get := func() (int, string) {
		rec := httptest.NewRecorder()
		r.m.Readyz(rec, httptest.NewRequest(http.MethodGet, "/readyz", nil))
		return rec.Code, rec.Body.String()
	}
	code, body := get()
	assert.Equal(t, http.StatusServiceUnavailable, code)
	assert.JSONEq(t, `{"status":"starting"}`, body)
	r.start(t, true)
	code, body = get()
	assert.Equal(t, http.StatusOK, code, body)
	r.m.Stopping()
	r.m.Started() // a late start hook does not undo the stop
	code, body = get()
	assert.Equal(t, http.StatusServiceUnavailable, code)
	assert.JSONEq(t, `{"status":"stopping"}`, body)
}

func TestReadyzSaysWhyWhileMisconfigured(t *testing.T) {
	r := newRig(t, rigConfig{
		mock: mockmail.Config{Script: func(string, int) mockmail.Reply { return mockmail.Reply{Status: http.StatusUnauthorized} }},
	})
	// Two orders: one order's refusal may be its own, and holds nothing.
	r.put(t, order.Inbound, "o1", paidOrder)
	r.put(t, order.Inbound, "o2", paidOrder)
	r.start(t, true)
	var body map[string]any
	require.Eventually(t, func() bool {
		var code int
		code, body = get(r.m.Readyz)
		return code == http.StatusServiceUnavailable
	}, 30*time.Second, 10*time.Millisecond, "readyz fails while the email service refuses the credentials; it answers %v", answer(r.m.Readyz))
	assert.Equal(t, "misconfigured", body["status"])
	assert.Contains(t, body["reason"], "401")
	v := scrape(t, r.m.Handler())
	assert.Equal(t, 2.0, v[`ordermail_sends_total{status_class="4xx"}`])
	assert.Equal(t, 1.0, v[`ordermail_send_duration_seconds_count{result="transient"}`], "the first refusal")
	assert.Equal(t, 1.0, v[`ordermail_send_duration_seconds_count{result="config"}`], "the second")
}

// TestEmbeddedFeedLag: the embedded store's feed reports how far the
// reader is behind the store, and 0 once it has caught up.
func TestEmbeddedFeedLag(t *testing.T) {
	bs := &blockingSender{release: make(chan struct{})}
	r := newRig(t, rigConfig{sender: bs, watcher: watcher.Config{Workers: 1}})
	released := false
	release := func() {
		if !released {
			close(bs.release)
			released = true
		}
	}
	defer release()
	for i := range 300 {
		r.put(t, order.Inbound, "l"+strconv.Itoa(i), paidOrder)
	}
	r.start(t, true)
	h := r.m.Handler()
	// One worker stuck on its first event: the reader stops some 65
	// events in, with the rest of the 300 past it.
	require.Eventually(t, func() bool { return scrape(t, h)["ordermail_feed_lag_changes"] > 200 }, 30*time.Second, 5*time.Millisecond,
		"a lag over 200 changes; it is %v", later.Value(func() any { return scrape(t, h)["ordermail_feed_lag_changes"] }))
	release()
	require.Eventually(t, func() bool {
		v := scrape(t, h)
		lag, ok := v["ordermail_feed_lag_changes"]
		return ok && lag == 0 && r.w.Stats().Sent == 300
	}, 30*time.Second, 10*time.Millisecond, "no lag once the 300 are sent: lag %v, sent %v",
		later.Value(func() any { return scrape(t, h)["ordermail_feed_lag_changes"] }), later.Value(func() any { return r.w.Stats().Sent }))
	assert.NotContains(t, scrape(t, h), "ordermail_feed_rollbacks_total", "the embedded feed counts none")
}

// TestEndpointAnswersLoopbackHostsOnly: a web page whose name an attacker
// pointed at 127.0.0.1 (DNS rebinding) reads nothing of an endpoint on
// loopback; one listening where other machines reach it answers whatever
// name Prometheus uses.
func TestEndpointAnswersLoopbackHostsOnly(t *testing.T) {
	t.Parallel()
	get := func(t *testing.T, addr, host, path string) int {
		t.Helper()
		req, err := http.NewRequest(http.MethodGet, "http://"+addr+path, nil)
		require.NoError(t, err)
		req.Host = host
		resp, err := http.DefaultClient.Do(req)
		require.NoError(t, err)
		resp.Body.Close()
		return resp.StatusCode
	}
	loop := newRig(t, rigConfig{metrics: metrics.Config{Listen: "127.0.0.1:0"}})
	loop.start(t, false)
	addr := loop.m.Addr().String()
	_, port, err := net.SplitHostPort(addr)
	require.NoError(t, err)
	for _, path := range []string{"/metrics", "/healthz", "/readyz"} {
		assert.Equal(t, http.StatusMisdirectedRequest, get(t, addr, "evil.example:"+port, path), path)
		assert.Equal(t, http.StatusMisdirectedRequest, get(t, addr, "evil.example", path), path)
	}
	for _, host := range []string{addr, "127.0.0.1", "localhost:" + port, "[::1]:" + port} {
		assert.Equal(t, http.StatusOK, get(t, addr, host, "/metrics"), host)
	}

	open := newRig(t, rigConfig{metrics: metrics.Config{Listen: "0.0.0.0:0"}})
	open.start(t, false)
	_, port, err = net.SplitHostPort(open.m.Addr().String())
	require.NoError(t, err)
	assert.Equal(t, http.StatusOK, get(t, "127.0.0.1:"+port, "evil.example:"+port, "/metrics"))
}

// TestASlowClientIsCutOff: a request whose body never comes (a scrape has
// none) held its connection, and a goroutine, for good; the endpoint now
// ends it once its read bound has passed.
func TestASlowClientIsCutOff(t *testing.T) {
	t.Parallel()
	r := newRig(t, rigConfig{metrics: metrics.Config{Listen: "127.0.0.1:0"}})
	r.start(t, false)
	conn, err := net.Dial("tcp", r.m.Addr().String())
	require.NoError(t, err)
	defer conn.Close()
	_, err = conn.Write([]byte("POST /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100000\r\n\r\nonly this"))
	require.NoError(t, err)
	require.NoError(t, conn.SetReadDeadline(time.Now().Add(2*time.Minute)))
	_, err = io.ReadAll(conn) // whatever it answers, up to its hanging up
	assert.NoError(t, err, "the endpoint held the connection open past 2 minutes")
}

// answer is an endpoint's answer when a wait's failure message is written.
func answer(h http.HandlerFunc) any {
	return later.Value(func() any { code, body := get(h); return fmt.Sprint(code, " ", body) })
}

type lockedMeta struct {
	store.Store
	locked *atomic.Bool
}

func (s lockedMeta) Replace(ctx context.Context, coll, key string, value []byte, cas uint64) (uint64, error) {
	if coll == store.Meta && s.locked.Load() {
		return 0, errors.New("database is locked")
	}
	return s.Store.Replace(ctx, coll, key, value, cas)
}

// A sweeper whose lease renewal fails lets OrdermailNoSweeper fire:
// max(timer_active) == 0 and max(timer_held) == 0 and
// max(retries_paused) == 0, the last from allow_retrys as last read. The
// series went with the role (unknown), and the alert could not fire.
func TestTheSweeperAlertsSeriesStayWhenTheLeaseCannotBeRenewed(t *testing.T) {
	var locked atomic.Bool
	r := newRig(t, rigConfig{wrap: func(s store.Store) store.Store { return lockedMeta{s, &locked} }})
	r.armRetries(t, `{}`)
	ctx := context.Background()
	now := time.Now()
	_, err := r.t.Sweep(ctx, now)
	require.NoError(t, err)
	require.Equal(t, timer.RoleActive, r.t.Status().Role)
	locked.Store(true)
	_, err = r.t.Sweep(ctx, now.Add(time.Second))
	require.Error(t, err)
	require.Equal(t, timer.RoleUnknown, r.t.Status().Role)
	v := scrape(t, r.m.Handler())
	assert.Equal(t, 0.0, v["ordermail_timer_active"])
	assert.Equal(t, 0.0, v["ordermail_timer_held"])
	paused, ok := v["ordermail_retries_paused"]
	assert.True(t, ok, "ordermail_retries_paused absent: max(ordermail_retries_paused) == 0 is empty, OrdermailNoSweeper cannot fire")
	assert.Equal(t, 0.0, paused, "allow_retrys was there")
}

// A connection whose request never ends (headers half sent as the service
// stops) kept Stop until its context ended, and fx then skipped the stops
// after it, the store's close among them: it gets half of what is left,
// then is closed, and the stop goes on.
func TestAConnectionLeftOpenLeavesTheStopItsTime(t *testing.T) {
	t.Parallel()
	r := newRig(t, rigConfig{metrics: metrics.Config{Listen: "127.0.0.1:0"}})
	require.NoError(t, r.m.Start(context.Background()))
	c, err := net.Dial("tcp", r.m.Addr().String())
	require.NoError(t, err)
	defer c.Close()
	_, err = io.WriteString(c, "GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n") // headers not finished
	require.NoError(t, err)
	// Seen by the server: a second request is answered only after the
	// first's connection was accepted (one listener, accepted in order).
	code, _ := getURL(t, "http://"+r.m.Addr().String()+"/healthz")
	require.Equal(t, http.StatusOK, code)

	// Shorter than the 5s net/http gives a connection that never sent
	// its request before Shutdown closes it: half of it is for the stop.
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Second)
	defer cancel()
	assert.NoError(t, r.m.Stop(ctx), "a scrape cut short is no failure of the stop")
	assert.NoError(t, ctx.Err(), "the stops after this one have time left")
}

func getURL(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	require.NoError(t, err)
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}
