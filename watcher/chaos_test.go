package watcher_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ordermail/ordermail/internal/later"
	"github.com/ordermail/ordermail/mailer"
	"github.com/ordermail/ordermail/order"
	"github.com/ordermail/ordermail/store"
	"github.com/ordermail/ordermail/store/embedded"
	"github.com/ordermail/ordermail/timer"
	"github.com/ordermail/ordermail/watcher"
	"github.com/stretchr/testify/require"
)

// flakyProvider is an idempotent email service that fails a share of
// requests (503) and, for another share, delivers but loses the answer.
// It counts the deliveries of each key.
type flakyProvider struct {
	mu        sync.Mutex
	rnd       *rand.Rand
	delivered map[string]int
	failRate  atomic.Int64 // per mille
	lostAck   atomic.Int64 // per mille
}

func (p *flakyProvider) Send(_ context.Context, key string, _ []byte) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	r := p.rnd.IntN(1000)
	if r < int(p.failRate.Load()) {
		return &mailer.SendError{Class: mailer.Transient, Status: 503}
	}
	p.delivered[key]++
	if r < int(p.failRate.Load()+p.lostAck.Load()) {
		return &mailer.SendError{Class: mailer.Transient} // delivered; the answer lost
	}
	return nil
}

func (p *flakyProvider) deliveries(key string) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.delivered[key]
}

// TestOrdersConfirmedOnceWhateverHappensAround: a few keys, and at once a
// shop that creates, pays, cancels, edits and deletes them; an operator
// who redrives every dead letter and runs retries now; the watcher stopped
// mid-work and started again; an email service failing 40% of requests and
// losing the answer of 10% more it delivered; the timer sweeping. Then the
// email service heals and the dead letters are redriven until nothing is
// left to do. Every order then paid is confirmed, and every confirmed order
// was delivered under its own incarnation's key (none confirmed without an
// email). The seed is in the log; ORDERMAIL_CHAOS_SEED draws the same
// actions again (when each happens is the scheduler's). It runs on the
// embedded store; scripts/crash-test.sh kills the service on Couchbase.
func TestOrdersConfirmedOnceWhateverHappensAround(t *testing.T) {
	seed := uint64(time.Now().UnixNano())
	if s := os.Getenv("ORDERMAIL_CHAOS_SEED"); s != "" {
		var err error
		seed, err = strconv.ParseUint(s, 10, 64)
		require.NoError(t, err, "ORDERMAIL_CHAOS_SEED")
	}
	t.Logf("seed %d (ORDERMAIL_CHAOS_SEED=%d draws the same actions)", seed, seed)
	ctx := context.Background()
	st, err := embedded.Open(ctx, embedded.Config{Path: filepath.Join(t.TempDir(), "o.db")})
	require.NoError(t, err)
	t.Cleanup(func() { st.Close() })
	p := &flakyProvider{rnd: rand.New(rand.NewPCG(seed, 1)), delivered: map[string]int{}}
	p.failRate.Store(400)
	p.lostAck.Store(100)
	_, err = st.Insert(ctx, order.Retry, order.ControlKey, []byte(`{}`))
	require.NoError(t, err)

	policy := order.Policy{Backoff: order.BackoffExponential, MinDelay: 5 * time.Millisecond, MaxDelay: 40 * time.Millisecond,
		MaxAttempts: 3, Quantum: 30 * time.Millisecond}
	start := func() *watcher.Watcher {
		w, err := watcher.New(watcher.Config{Workers: 4, Policy: policy, SingleConsumer: true, AtomicOutcomes: true}, st, p, quiet, nil)
		require.NoError(t, err)
		require.NoError(t, w.Start(ctx))
		return w
	}
	var wmu sync.Mutex
	w := start()
	tm, err := timer.New(timer.Config{Interval: 20 * time.Millisecond, Quantum: 30 * time.Millisecond}, st, quiet, nil)
	require.NoError(t, err)
	tm.Start()
	defer tm.Stop(ctx)

	c := newChaos(seed, st, nil)
	c.shop(ctx, 10)
	c.shop(ctx, 11)
	c.operator(ctx, 20)
	// Restarts, some cutting the in-flight work short.
	c.actor(30, func(r *rand.Rand) {
		time.Sleep(time.Duration(50+r.IntN(200)) * time.Millisecond)
		wmu.Lock()
		defer wmu.Unlock()
		sctx, cancel := context.WithTimeout(ctx, time.Duration(r.IntN(30))*time.Millisecond)
		w.Stop(sctx)
		cancel()
		w = start()
	})
	run := 4 * time.Second
	if testing.Short() {
		run = time.Second
	}
	time.Sleep(run) // how long the chaos lasts, not a bound on anything
	c.end()

	// The email service heals; the dead letters of orders that exist are
	// redriven until nothing is left to do (one whose order is gone would
	// only come back as order_missing).
	p.failRate.Store(0)
	p.lostAck.Store(0)
	problems := func() []string {
		var out []string
		if n, err := st.Counts(ctx); err != nil {
			return []string{"counts: " + err.Error()}
		} else if n.RetryDocs > 0 {
			out = append(out, fmt.Sprintf("%d retries left", n.RetryDocs))
		}
		return append(out, c.unsettled(ctx, func(string) string { return "" }, func(k string, s store.State, o order.Order) string {
			if key := order.IdempotencyKey(k, s.Order.Incarnation); o.ConfirmationEmailSent && p.deliveries(key) == 0 {
				return fmt.Sprintf("%s confirmed without a delivery under %s", k, key)
			}
			return ""
		})...)
	}
	var left atomic.Pointer[[]string]
	require.Eventually(t, func() bool { l := problems(); left.Store(&l); return len(l) == 0 }, 2*time.Minute, 100*time.Millisecond,
		"seed %d: %v", seed, later.Value(func() any { return *left.Load() }))
	wmu.Lock()
	defer wmu.Unlock()
	require.NoError(t, w.Stop(ctx))
}
