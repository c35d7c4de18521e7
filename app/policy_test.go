package app_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ordermail/ordermail/fixtures"
	"github.com/ordermail/ordermail/internal/later"
	"github.com/ordermail/ordermail/mailer"
	"github.com/ordermail/ordermail/mailer/mockmail"
	"github.com/ordermail/ordermail/ops"
	"github.com/ordermail/ordermail/order"
	"github.com/ordermail/ordermail/store"
	"github.com/ordermail/ordermail/timer"
	"github.com/ordermail/ordermail/watcher"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func deadLetter(t *testing.T, st store.Store, key string) (order.DeadLetterDoc, bool) {
	t.Helper()
	d, err := st.Get(context.Background(), order.DeadLetter, key)
	if err != nil {
		if !errors.Is(err, store.ErrNotFound) {
			t.Logf("dead letter %s: %v", key, err)
		}
		return order.DeadLetterDoc{}, false
	}
	dl, err := order.DecodeDeadLetter(d.Value)
	if err != nil {
		t.Logf("dead letter %s: %v", key, err)
		return order.DeadLetterDoc{}, false
	}
	return dl, true
}

func confirmed(t *testing.T, st store.Store, key string) bool {
	t.Helper()
	d, err := st.Get(context.Background(), order.Inbound, key)
	if err != nil {
		t.Logf("order %s: %v", key, err)
		return false
	}
	o, err := order.DecodeOrder(d.Value)
	if err != nil {
		t.Logf("order %s: %v", key, err)
		return false
	}
	return o.ConfirmationEmailSent
}

// placeNamed writes paid orders under the given keys.
func placeNamed(t *testing.T, st store.Store, keys ...string) {
	t.Helper()
	docs := fixtures.Generate(len(keys), 3)
	for i, k := range keys {
		paid, err := order.SetPaymentStatus(docs[i].Value, order.StatusPaid)
		require.NoError(t, err)
		_, err = st.Upsert(context.Background(), order.Inbound, k, paid)
		require.NoError(t, err)
	}
}

// TestRetryPolicyEndToEnd scripts the mock per order: each ends confirmed or
// dead-lettered for the right reason, after the right number of attempts.
func TestRetryPolicyEndToEnd(t *testing.T) {
	var mu sync.Mutex
	seen := map[string][]time.Time{}
	r := newScriptedRun(t, mockmail.Config{Script: func(key string, n int) mockmail.Reply {
		mu.Lock()
		seen[order.OrderKeyOf(key)] = append(seen[order.OrderKeyOf(key)], time.Now())
		mu.Unlock()
		switch order.OrderKeyOf(key) {
		case "twice":
			if n <= 2 {
				return mockmail.Reply{Status: http.StatusServiceUnavailable}
			}
		case "refused":
			return mockmail.Reply{Status: http.StatusBadRequest}
		case "throttled":
			if n == 1 {
				return mockmail.Reply{Status: http.StatusTooManyRequests, RetryAfter: "1"}
			}
		case "hopeless":
			return mockmail.Reply{Status: http.StatusBadGateway}
		}
		return mockmail.Reply{Status: http.StatusOK}
	}})
	r.cfg.Watcher.Policy.MaxAttempts = 4
	a, st := r.start(t)
	defer stop(t, a)
	placeNamed(t, st, "twice", "refused", "throttled", "hopeless", "fine")
	_, err := st.Upsert(context.Background(), order.Retry, order.ControlKey, []byte(`{}`))
	require.NoError(t, err)

	require.Eventually(t, func() bool {
		c := counts(t, st)
		return c.OrdersConfirmed == 3 && c.DeadLetters == 2 && c.RetryDocs == 0
	}, 30*time.Second, 10*time.Millisecond, "counts %+v", later.Value(func() any { return counts(t, st) }))

	for _, k := range []string{"twice", "throttled", "fine"} {
		assert.True(t, confirmed(t, st, k), k)
	}
	req := byOrder(r.mock.Requests())
	assert.Equal(t, 3, req["twice"], "two failures, then the success")
	assert.Equal(t, 1, req["refused"], "a permanent error is not retried")
	assert.Equal(t, 2, req["throttled"])
	assert.Equal(t, 4, req["hopeless"], "the attempt budget")
	assert.Equal(t, 1, req["fine"])

	mu.Lock()
	th := seen["throttled"]
	mu.Unlock()
	require.Len(t, th, 2)
	assert.GreaterOrEqual(t, th[1].Sub(th[0]), time.Second, "Retry-After: 1 was honoured over the 10ms backoff")

	refused, ok := deadLetter(t, st, "refused")
	require.True(t, ok)
	assert.Equal(t, order.ReasonPermanent, refused.Reason)
	assert.Equal(t, 400, refused.LastStatus)
	assert.Equal(t, 1, refused.Attempts)
	hopeless, ok := deadLetter(t, st, "hopeless")
	require.True(t, ok)
	assert.Equal(t, order.ReasonExhausted, hopeless.Reason)
	assert.Equal(t, 502, hopeless.LastStatus)
	assert.Equal(t, 4, hopeless.Attempts)
	assert.Positive(t, hopeless.FirstAttemptAt)
	assert.GreaterOrEqual(t, hopeless.LastAttemptAt, hopeless.FirstAttemptAt)
	assert.False(t, confirmed(t, st, "refused"), "a dead-lettered order stays unconfirmed")

	st2 := r.mock.Stats()
	assert.Equal(t, 3, st2.Deliveries)
	assert.Zero(t, st2.DuplicateRequests)
}

// TestRedriveOneAndAll: dead letters redriven one by name, then all of
// them (more than a redrive handles at once), on the embedded store and on
// the Couchbase test server: each is confirmed, once.
func TestRedriveOneAndAll(t *testing.T) {
	for _, b := range backends[:2] {
		t.Run(b.name, func(t *testing.T) { redriveOneAndAll(t, b) })
	}
}

func redriveOneAndAll(t *testing.T, b backend) {
	var refusing atomic.Bool
	refusing.Store(true)
	r := newRunOn(t, b, mockmail.Config{Script: func(string, int) mockmail.Reply {
		if refusing.Load() {
			return mockmail.Reply{Status: http.StatusUnprocessableEntity}
		}
		return mockmail.Reply{Status: http.StatusOK}
	}})
	r.cfg.Mail.BreakerCooldown = 200 * time.Millisecond // the probe once the service is fixed
	a, st := r.start(t)
	defer stop(t, a)
	keys := make([]string, 40)
	for i := range keys {
		keys[i] = fmt.Sprintf("o%02d", i)
	}
	placeNamed(t, st, keys...)
	deadLetters := func() int {
		n := 0
		for _, k := range keys {
			if _, err := st.Get(context.Background(), order.DeadLetter, k); err == nil {
				n++
			}
		}
		return n
	}
	// Every order refused alike (422): the first nine are dead-lettered,
	// each as its own; then the sends are held, as when the service
	// refuses the configuration, and the rest wait as retries.
	const dead = 9
	retries := func() int { return counts(t, st).RetryDocs }
	require.Eventually(t, func() bool { return deadLetters() == dead && retries() == len(keys)-dead }, 30*time.Second, 10*time.Millisecond,
		"dead letters: %v, retries %v of %d", later.Value(func() any { return deadLetters() }), later.Value(func() any { return retries() }), len(keys))
	dl := slices.DeleteFunc(slices.Clone(keys), func(k string) bool { _, ok := deadLetter(t, st, k); return !ok })
	held := slices.DeleteFunc(slices.Clone(keys), func(k string) bool { return slices.Contains(dl, k) })

	refusing.Store(false) // the email service was fixed
	ctx := context.Background()
	_, err := st.Upsert(ctx, order.Retry, order.ControlKey, []byte(`{}`)) // the held ones go out as retries
	require.NoError(t, err)
	waitConfirmed(t, st, held)
	require.NoError(t, st.Remove(ctx, order.Retry, order.ControlKey, 0)) // retries paused again

	n, err := ops.Redrive(ctx, st, time.Now(), []string{dl[1]}, false)
	require.NoError(t, err)
	assert.Equal(t, 1, n)
	require.Eventually(t, func() bool { return confirmed(t, st, dl[1]) }, 20*time.Second, 10*time.Millisecond,
		"redriven without allow_retrys: tried promptly")
	assert.Equal(t, dead-1, deadLetters())

	n, err = ops.Redrive(ctx, st, time.Now(), nil, true)
	require.NoError(t, err)
	assert.Equal(t, dead-1, n)
	waitConfirmed(t, st, dl)
	assert.Zero(t, deadLetters())
	assertDeliveredOnce(t, r.mock, keys)
}

func TestRedriveKeepsCountAndFreshBudget(t *testing.T) {
	r := newScriptedRun(t, mockmail.Config{FailRate: 1, FailStatus: http.StatusServiceUnavailable})
	r.cfg.Watcher.Policy.MaxAttempts = 2
	a, st := r.start(t)
	defer stop(t, a)
	placeNamed(t, st, "o")
	_, err := st.Upsert(context.Background(), order.Retry, order.ControlKey, []byte(`{}`))
	require.NoError(t, err)
	require.Eventually(t, func() bool { _, ok := deadLetter(t, st, "o"); return ok }, 30*time.Second, 10*time.Millisecond,
		"o dead-lettered after its two attempts; counts %+v", later.Value(func() any { return counts(t, st) }))

	_, err = ops.Redrive(context.Background(), st, time.Now(), []string{"o"}, false)
	require.NoError(t, err)
	require.Eventually(t, func() bool {
		d, ok := deadLetter(t, st, "o")
		return ok && d.RedriveCount == 1
	}, 30*time.Second, 10*time.Millisecond, "o dead-lettered again after its redrive; dead letter %+v",
		later.Value(func() any { d, _ := deadLetter(t, st, "o"); return d }))
	d, _ := deadLetter(t, st, "o")
	assert.Equal(t, 2, d.Attempts, "a fresh budget of two attempts")
	assert.Equal(t, 4, byOrder(r.mock.Requests())["o"])
}

func TestPauseStopsRetriesAndResumeFinishesThem(t *testing.T) {
	r := newScriptedRun(t, mockmail.Config{Script: func(_ string, n int) mockmail.Reply {
		if n == 1 {
			return mockmail.Reply{Status: http.StatusServiceUnavailable}
		}
		return mockmail.Reply{Status: http.StatusOK}
	}})
	var tm *timer.Timer
	a, st := r.start(t, &tm)
	defer stop(t, a)
	keys := []string{"p1", "p2", "p3"}
	placeNamed(t, st, keys...) // no allow_retrys: paused
	require.Eventually(t, func() bool { return counts(t, st).RetryDocs == 3 }, 30*time.Second, 10*time.Millisecond,
		"three retry documents; counts %+v", later.Value(func() any { return counts(t, st) }))

	// Ten more ticks go by; nothing is retried while paused.
	ticks := tm.Ticks()
	require.Eventually(t, func() bool { return tm.Ticks() >= ticks+10 }, 30*time.Second, 5*time.Millisecond,
		"ten ticks from %d; at %v", ticks, later.Value(func() any { return tm.Ticks() }))
	assert.Equal(t, 3, r.mock.Stats().Requests)
	s, err := ops.ReadStatus(context.Background(), st, time.Now(), r.cfg.Timer.Quantum)
	require.NoError(t, err)
	assert.True(t, s.Paused)
	assert.Equal(t, 3, s.DueNow, "due, but waiting")

	started, _, _, err := ops.StartRetries(context.Background(), st, order.Control{})
	require.NoError(t, err)
	require.True(t, started)
	require.Eventually(t, func() bool {
		c := counts(t, st)
		return c.OrdersConfirmed == 3 && c.RetryDocs == 0
	}, 30*time.Second, 10*time.Millisecond, "all three confirmed once resumed; counts %+v", later.Value(func() any { return counts(t, st) }))
	assert.Equal(t, 6, r.mock.Stats().Requests)
}

// TestBreakerProtectsAServiceThatIsDown: while the email service is down the
// breaker opens and retries are scheduled instead of sent; once it is back,
// everything is confirmed and no attempt budget was spent on held-back sends.
func TestBreakerProtectsAServiceThatIsDown(t *testing.T) {
	for _, b := range backends[:2] { // the embedded store and the Couchbase test server
		t.Run(b.name, func(t *testing.T) { breakerProtects(t, b, false) })
	}
	// A standby on the same embedded file sends nothing, so its breaker
	// stays closed: it must not sweep on it while the active one's is open
	// (it flagged the whole backlog every tick, 221 sends held back over
	// three cooldowns against none).
	t.Run(backends[0].name+"-with-a-standby", func(t *testing.T) { breakerProtects(t, backends[0], true) })
}

// runWhileDown is a run on b whose email service answers 503 until down is
// set false, with a breaker that opens after five failures for 200ms and
// three attempts an order.
func runWhileDown(t *testing.T, b backend) (*run, *atomic.Bool) {
	down := &atomic.Bool{}
	down.Store(true)
	r := newRunOn(t, b, mockmail.Config{Script: func(string, int) mockmail.Reply {
		if down.Load() {
			return mockmail.Reply{Status: http.StatusServiceUnavailable}
		}
		return mockmail.Reply{Status: http.StatusOK}
	}})
	r.cfg.Mail.BreakerFailures = 5
	r.cfg.Mail.BreakerCooldown = 200 * time.Millisecond
	r.cfg.Watcher.Policy.MaxAttempts = 3
	return r, down
}

func breakerProtects(t *testing.T, b backend, standby bool) {
	r, down := runWhileDown(t, b)
	var client *mailer.Client
	var w *watcher.Watcher
	a, st := r.start(t, &client, &w)
	defer stop(t, a)
	if standby {
		var wB *watcher.Watcher
		sb, _ := r.start(t, &wB)
		defer stop(t, sb)
		require.False(t, wB.Running(), "the second instance is the feed's standby")
	}
	placed := time.Now()
	keys := r.placeOrders(t, st, 100)

	var c store.Counts
	require.Eventually(t, func() bool { c = counts(t, st); return c.RetryDocs == 100 }, 30*time.Second, 10*time.Millisecond,
		"every order waits as a retry; last counts %+v", &c)
	start := time.Now()
	assert.NotEqual(t, "closed", client.BreakerState(), "open, or half-open after its cooldown")
	calls := r.mock.Stats().Requests
	// Five to open it, those already under way (a worker each), and a
	// probe a cooldown until every order has its retry, however long the
	// feed took for that on this machine.
	most := r.cfg.Mail.BreakerFailures + r.cfg.Watcher.Workers + int(start.Sub(placed)/r.cfg.Mail.BreakerCooldown) + 1
	t.Logf("%d calls to the failing service for 100 orders in %s (at most %d)", calls, start.Sub(placed), most)
	assert.LessOrEqual(t, calls, most, "the breaker held the other sends back")
	assert.Positive(t, w.Stats().Held, "sends were held back, not made")

	// While it stays down the backlog waits unflagged, one retry a
	// cooldown going out as the probe: before, every retry fell due a
	// cooldown later, was flagged, held back and written again (20,000
	// retries: 670 writes a second through an outage, for nothing).
	held := w.Stats().Held
	require.Eventually(t, func() bool { return r.mock.Stats().Requests >= calls+3 }, 30*time.Second, 10*time.Millisecond,
		"three probes, a cooldown apart")
	heldAgain := w.Stats().Held - held
	t.Logf("%d sends held back over three cooldowns (%v)", heldAgain, time.Since(start).Round(time.Millisecond))
	assert.Less(t, heldAgain, int64(20), "the backlog is not flagged only to be held back again")

	down.Store(false)
	waitAllConfirmed(t, st, keys)
	t.Logf("all confirmed %v after the start", time.Since(start).Round(time.Millisecond))
	assert.Zero(t, counts(t, st).DeadLetters, "held-back sends spent no attempts, and the probes went round: nobody exhausted 3")
	assert.Equal(t, "closed", client.BreakerState())
	assertDeliveredOnce(t, r.mock, keys)
}

// Two instances on one Couchbase cluster through an outage: each has its
// own breaker, the feed gives each half the vBuckets, and the one that
// sweeps may flag a probe that lands on the other. Nothing may be
// dead-lettered (held sends spend no attempt, and the probes go round the
// backlog whoever sends them), the backlog is not flagged over and over to
// be held back, and once the service is back every order is confirmed
// once, including those held back by the instance whose breaker was still
// open when the other swept the backlog.
func TestBreakerProtectsAServiceThatIsDownFromTwoInstances(t *testing.T) {
	if testing.Short() {
		t.Skip("two services through an outage: not in -short")
	}
	r, down := runWhileDown(t, backends[1])
	var c1, c2 *mailer.Client
	var w1, w2 *watcher.Watcher
	a1, st := r.start(t, &c1, &w1)
	defer stop(t, a1)
	a2, _ := r.start(t, &c2, &w2)
	defer stop(t, a2)
	// Both must own vBuckets before the orders come, so that each gets
	// some and both breakers open.
	require.Eventually(t, func() bool { return owners(st, r.cfg.Watcher.FeedName) == 2 }, 60*time.Second, 10*time.Millisecond,
		"the two instances share the vBuckets")
	keys := r.placeOrders(t, st, 100)

	var c store.Counts
	require.Eventually(t, func() bool { c = counts(t, st); return c.RetryDocs == 100 }, 60*time.Second, 10*time.Millisecond,
		"every order waits as a retry; last counts %+v", &c)
	calls := r.mock.Stats().Requests
	t.Logf("%d calls to the failing service for 100 orders: %d and %d", calls, w1.Stats().Sends, w2.Stats().Sends)
	held := w1.Stats().Held + w2.Stats().Held
	require.Eventually(t, func() bool { return r.mock.Stats().Requests >= calls+6 }, 60*time.Second, 10*time.Millisecond,
		"six probes")
	heldAgain := w1.Stats().Held + w2.Stats().Held - held
	t.Logf("%d sends held back over six probes", heldAgain)
	assert.Less(t, heldAgain, int64(40), "the backlog is not flagged only to be held back again")

	down.Store(false)
	waitAllConfirmed(t, st, keys)
	t.Logf("all confirmed; breakers %s and %s", c1.BreakerState(), c2.BreakerState())
	assert.Zero(t, counts(t, st).DeadLetters, "held-back sends spent no attempts, and the probes went round")
	assertDeliveredOnce(t, r.mock, keys)
}

// An instance whose own way to the email service is broken (here its URL
// refuses connections) while the other's works: its breaker opens and its
// sends are held back, so it steps aside and the other sends its orders,
// which would otherwise wait for as long as it stays broken. Every order
// is confirmed once, none dead-lettered.
func TestAnInstanceWhoseWayIsBrokenStepsAside(t *testing.T) {
	if testing.Short() {
		t.Skip("two services, one cut off: not in -short")
	}
	r := newRunOn(t, backends[1], mockmail.Config{})
	r.cfg.Mail.BreakerFailures = 3
	r.cfg.Mail.BreakerCooldown = 200 * time.Millisecond
	r.cfg.Store.Couchbase.StepAsideAfter = time.Second
	var good, cut *mailer.Client
	a1, st := r.start(t, &good)
	defer stop(t, a1)
	broken := *r
	broken.cfg.Mail.URL = refusedURL(t)
	var cutW *watcher.Watcher
	a2, _ := broken.start(t, &cut, &cutW)
	defer stop(t, a2)
	require.Eventually(t, func() bool { return owners(st, r.cfg.Watcher.FeedName) == 2 }, 60*time.Second, 10*time.Millisecond,
		"the two instances share the vBuckets")
	keys := r.placeOrders(t, st, 100)

	var ms []store.Member
	require.Eventually(t, func() bool {
		ms, _ = st.(store.MemberLister).Members(context.Background(), r.cfg.Watcher.FeedName)
		return slices.ContainsFunc(ms, func(m store.Member) bool { return m.State() == "aside" })
	}, 60*time.Second, 10*time.Millisecond, "the cut-off instance steps aside; members %+v", &ms)
	require.Eventually(t, func() bool { fs, _ := cutW.FeedStats(); return fs.Aside }, 60*time.Second, 10*time.Millisecond,
		"the cut-off instance's feed says it stands aside (ordermail_feed_aside)")
	waitAllConfirmed(t, st, keys)
	t.Logf("all confirmed; breakers %s (working) and %s (cut off)", good.BreakerState(), cut.BreakerState())
	assert.Zero(t, counts(t, st).DeadLetters)
	assert.Equal(t, "closed", good.BreakerState())
	assertDeliveredOnce(t, r.mock, keys)
}

// refusedURL is an http:// URL on loopback where nothing listens.
func refusedURL(t *testing.T) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	addr := l.Addr().String()
	require.NoError(t, l.Close())
	return "http://" + addr
}

// owners counts the live members of feed that own vBuckets.
func owners(st store.Store, feed string) int {
	ms, err := st.(store.MemberLister).Members(context.Background(), feed)
	if err != nil {
		return 0
	}
	n := 0
	for _, m := range ms {
		if m.Live && m.Partitions > 0 {
			n++
		}
	}
	return n
}
