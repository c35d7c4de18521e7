package timer_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ordermail/ordermail/internal/later"
	"github.com/ordermail/ordermail/internal/syncbuf"
	"github.com/ordermail/ordermail/lease"
	"github.com/ordermail/ordermail/order"
	"github.com/ordermail/ordermail/store"
	"github.com/ordermail/ordermail/store/embedded"
	"github.com/ordermail/ordermail/timer"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

var (
	pinned = time.Date(2026, 11, 21, 12, 0, 0, 0, time.UTC)
	quiet  = slog.New(slog.NewTextHandler(io.Discard, nil))
)

func openStore(t *testing.T) *embedded.Store {
	t.Helper()
	st, err := embedded.Open(context.Background(), embedded.Config{Path: filepath.Join(t.TempDir(), "o.db")})
	require.NoError(t, err)
	t.Cleanup(func() { st.Close() })
	return st
}

func retryDoc(t *testing.T, st store.Store, key string, age time.Duration) {
	t.Helper()
	r := order.RetryDoc{Type: order.TypeConfirmation, DocID: key}.Failed(pinned.Add(-age))
	_, err := st.Upsert(context.Background(), order.Retry, key, r.Encode())
	require.NoError(t, err)
}

// fired says whether key's retry document is flagged; false, said in the
// log, when it cannot be read (a condition of Eventually must not stop the
// test).
func fired(t *testing.T, st store.Store, key string) bool {
	t.Helper()
	d, err := st.Get(context.Background(), order.Retry, key)
	if err != nil {
		t.Logf("retry %s: %v", key, err)
		return false
	}
	r, err := order.DecodeRetryDoc(d.Value)
	if err != nil {
		t.Logf("retry %s: %v", key, err)
		return false
	}
	return r.FireRetry
}

func TestSweepFlagsOnlyAgedDocsWhileArmed(t *testing.T) {
	st := openStore(t)
	ctx := context.Background()
	tm, err := timer.New(timer.Config{Interval: time.Second, Quantum: 15 * time.Second}, st, quiet, nil)
	require.NoError(t, err)

	retryDoc(t, st, "aged", 16*time.Second)
	retryDoc(t, st, "young", 14*time.Second)

	res, err := tm.Sweep(ctx, pinned)
	require.NoError(t, err)
	assert.Equal(t, timer.Result{Armed: false}, res, "no allow_retrys: not armed")
	assert.False(t, fired(t, st, "aged"))

	_, err = st.Insert(ctx, order.Retry, order.ControlKey, []byte(`{}`))
	require.NoError(t, err)
	res, err = tm.Sweep(ctx, pinned)
	require.NoError(t, err)
	assert.Equal(t, timer.Result{Armed: true, Swept: true, Flagged: 1, Batches: 1}, res)
	assert.True(t, fired(t, st, "aged"))
	assert.False(t, fired(t, st, "young"))

	// Two seconds later the young one has aged too; the aged one is not
	// flagged twice.
	res, err = tm.Sweep(ctx, pinned.Add(2*time.Second))
	require.NoError(t, err)
	assert.Equal(t, timer.Result{Armed: true, Swept: true, Flagged: 1, Batches: 1}, res)
	assert.True(t, fired(t, st, "young"))

	require.NoError(t, st.Remove(ctx, order.Retry, order.ControlKey, 0))
	retryDoc(t, st, "later", time.Hour)
	res, err = tm.Sweep(ctx, pinned.Add(4*time.Second))
	require.NoError(t, err)
	assert.Equal(t, timer.Result{Armed: false}, res, "deleting allow_retrys stops retries")
	assert.False(t, fired(t, st, "later"))
}

// flakyStore fails the sweep once, to show the schedule survives it.
type flakyStore struct {
	store.Store
	calls atomic.Int32
}

func (f *flakyStore) SweepRetries(ctx context.Context, now time.Time, quantum time.Duration, limit int) (store.SweepResult, error) {
	if f.calls.Add(1) == 1 {
		return store.SweepResult{}, store.ErrUnavailable
	}
	return f.Store.SweepRetries(ctx, now, quantum, limit)
}

func TestScheduleKeepsFiringAfterAFailedSweep(t *testing.T) {
	st := openStore(t)
	flaky := &flakyStore{Store: st}
	_, err := st.Insert(context.Background(), order.Retry, order.ControlKey, []byte(`{}`))
	require.NoError(t, err)
	retryDoc(t, st, "due", time.Minute)

	// The real clock: cron runs on it.
	tm, err := timer.New(timer.Config{Interval: 20 * time.Millisecond, Quantum: time.Millisecond}, flaky, quiet, nil)
	require.NoError(t, err)
	tm.Start()
	defer func() { assert.NoError(t, tm.Stop(context.Background())) }()

	require.Eventually(t, func() bool { return flaky.calls.Load() >= 2 }, 30*time.Second, 5*time.Millisecond,
		"a sweep after the failed one; sweeps tried: %v", later.Value(func() any { return flaky.calls.Load() }))
	require.Eventually(t, func() bool { return fired(t, st, "due") }, 30*time.Second, 5*time.Millisecond,
		"the due retry flagged; flagged: %v (sweeps tried: %v)",
		later.Value(func() any { return fired(t, st, "due") }), later.Value(func() any { return flaky.calls.Load() }))
}

// TestRetriesStartTakesEffectAtOnce: while retries are paused the timer
// reads allow_retrys often, whatever its interval (a minute here), so that
// the due retries are flagged as soon as an operator starts retries, not an
// interval later.
func TestRetriesStartTakesEffectAtOnce(t *testing.T) {
	st := openStore(t)
	retryDoc(t, st, "due", time.Minute)
	tm, err := timer.New(timer.Config{Interval: time.Minute, Quantum: time.Millisecond}, st, quiet, nil)
	require.NoError(t, err)
	tm.Start()
	defer func() { assert.NoError(t, tm.Stop(context.Background())) }()
	paused := func() bool { return tm.Status().Role == timer.RolePaused }
	require.Eventually(t, paused, 30*time.Second, 5*time.Millisecond, "no tick told the timer it is paused (interval: a minute)")
	assert.False(t, fired(t, st, "due"), "flagged while paused")

	_, err = st.Insert(context.Background(), order.Retry, order.ControlKey, []byte(`{}`))
	require.NoError(t, err)
	if !assert.Eventually(t, func() bool { return fired(t, st, "due") }, 30*time.Second, 5*time.Millisecond) {
		t.Fatalf("the due retry was not flagged after retries started (role %q)", tm.Status().Role)
	}
	assert.Equal(t, timer.RoleActive, tm.Status().Role)
}

func TestConfigValidate(t *testing.T) {
	t.Parallel()
	assert.ErrorContains(t, timer.Config{Interval: time.Millisecond}.Validate(), "timer-interval")
	assert.ErrorContains(t, timer.Config{Quantum: -time.Second}.Validate(), "retry-quantum")
	assert.NoError(t, timer.Config{}.Validate())
}

func TestControlDocumentSetsIntervalAndQuantum(t *testing.T) {
	st := openStore(t)
	ctx := context.Background()
	tm, err := timer.New(timer.Config{Interval: time.Second, Quantum: 15 * time.Second}, st, quiet, nil)
	require.NoError(t, err)
	_, err = st.Upsert(ctx, order.Retry, order.ControlKey, []byte(`{"interval":"10s","quantum":"1h"}`))
	require.NoError(t, err)
	retryDoc(t, st, "a", time.Minute) // older than 15s, younger than 1h

	res, err := tm.Sweep(ctx, pinned)
	require.NoError(t, err)
	assert.Equal(t, timer.Result{Armed: true, Swept: true, Flagged: 0, Batches: 1}, res, "the document's quantum of 1h applies")
	res, err = tm.Sweep(ctx, pinned.Add(5*time.Second))
	require.NoError(t, err)
	assert.Equal(t, timer.Result{Armed: true}, res, "within the document's 10s interval: no sweep")

	// A change takes effect at the next tick, without a restart.
	_, err = st.Upsert(ctx, order.Retry, order.ControlKey, []byte(`{"interval":1,"quantum":"30s"}`))
	require.NoError(t, err)
	res, err = tm.Sweep(ctx, pinned.Add(6*time.Second))
	require.NoError(t, err)
	assert.Equal(t, timer.Result{Armed: true, Swept: true, Flagged: 1, Batches: 1}, res)
}

func TestNonsenseControlDocumentFallsBackToSettings(t *testing.T) {
	st := openStore(t)
	ctx := context.Background()
	var logs bytes.Buffer
	log := slog.New(slog.NewTextHandler(&logs, nil))
	tm, err := timer.New(timer.Config{Interval: time.Second, Quantum: 15 * time.Second}, st, log, nil)
	require.NoError(t, err)
	_, err = st.Upsert(ctx, order.Retry, order.ControlKey, []byte(`{"interval":"-5 parsecs"}`))
	require.NoError(t, err)
	retryDoc(t, st, "a", time.Minute)

	res, err := tm.Sweep(ctx, pinned)
	require.NoError(t, err)
	assert.Equal(t, timer.Result{Armed: true, Swept: true, Flagged: 1, Batches: 1}, res, "still armed, with the settings")
	_, err = tm.Sweep(ctx, pinned.Add(time.Second))
	require.NoError(t, err)
	assert.Equal(t, 1, strings.Count(logs.String(), "ignoring the settings in allow_retrys"), "reported once: %s", logs.String())
	assert.Contains(t, logs.String(), `interval: \"-5 parsecs\" is not a duration`)
}

func TestOneSweeperAmongInstances(t *testing.T) {
	st := openStore(t)
	ctx := context.Background()
	now := pinned
	clock := func() time.Time { return now }
	a, err := timer.New(timer.Config{Interval: time.Second, Owner: "a"}, st, quiet, clock)
	require.NoError(t, err)
	b, err := timer.New(timer.Config{Interval: time.Second, Owner: "b"}, st, quiet, clock)
	require.NoError(t, err)
	_, err = st.Insert(ctx, order.Retry, order.ControlKey, []byte(`{}`))
	require.NoError(t, err)
	retryDoc(t, st, "x", time.Minute)

	res, err := a.Sweep(ctx, now)
	require.NoError(t, err)
	assert.Equal(t, timer.Result{Armed: true, Swept: true, Flagged: 1, Batches: 1}, res)
	res, err = b.Sweep(ctx, now)
	require.NoError(t, err)
	assert.Equal(t, timer.Result{Armed: true, Standby: true}, res, "b waits while a holds the lease")

	now = now.Add(10 * time.Second) // a died: its 3s lease ran out
	res, err = b.Sweep(ctx, now)
	require.NoError(t, err)
	assert.True(t, res.Swept, "b took over")
	res, err = a.Sweep(ctx, now)
	require.NoError(t, err)
	assert.True(t, res.Standby)
}

// brokenSweep fails every sweep while the lease's reads and writes work:
// the query service out of reach of one host, say.
type brokenSweep struct{ store.Store }

func (brokenSweep) SweepRetries(context.Context, time.Time, time.Duration, int) (store.SweepResult, error) {
	return store.SweepResult{}, errors.New("query service unreachable")
}

// TestAnInstanceWhoseSweepsFailLeavesTheLease: an instance that holds the
// lease and whose every sweep fails gives the lease up after a few, so that
// another instance sweeps; then it stands by while that one holds it.
func TestAnInstanceWhoseSweepsFailLeavesTheLease(t *testing.T) {
	st := openStore(t)
	ctx := context.Background()
	now := pinned
	clock := func() time.Time { return now }
	a, err := timer.New(timer.Config{Interval: time.Second, Owner: "a"}, brokenSweep{st}, quiet, clock)
	require.NoError(t, err)
	b, err := timer.New(timer.Config{Interval: time.Second, Owner: "b"}, st, quiet, clock)
	require.NoError(t, err)
	_, err = st.Insert(ctx, order.Retry, order.ControlKey, []byte(`{}`))
	require.NoError(t, err)
	retryDoc(t, st, "x", time.Minute)

	var aErrs []string
	var left lease.Holding // the lease as a left it
	flaggedAt := -1
	for tick := range 10 {
		if _, err := a.Sweep(ctx, now); err != nil {
			aErrs = append(aErrs, err.Error())
			if left, err = timer.ReadSweeper(ctx, st); err != nil {
				t.Fatal(err)
			}
		}
		res, err := b.Sweep(ctx, now)
		require.NoError(t, err)
		if res.Flagged > 0 && flaggedAt < 0 {
			flaggedAt = tick
		}
		now = now.Add(time.Second)
	}
	require.Len(t, aErrs, 3, "a's sweeps failed until it left the lease, then it stood by: %q", aErrs)
	assert.Contains(t, aErrs[2], "3 sweeps failed in a row: the sweep lease is left to another instance")
	assert.Equal(t, "a", left.Left, "the lease says who left it")
	assert.Equal(t, "its sweeps failed 3 times in a row: query service unreachable", left.Why, "and why")
	assert.Equal(t, 2, flaggedAt, "b swept at the tick a gave the lease up")
	assert.True(t, fired(t, st, "x"))
	assert.Equal(t, timer.RoleStandby, a.Status().Role)
	assert.Equal(t, timer.RoleActive, b.Status().Role)
}

// stoppedDuringSweep deletes allow_retrys during its batch number at
// (from 1), as an operator's retries stop would.
type stoppedDuringSweep struct {
	store.Store
	at    int32
	calls atomic.Int32
}

func (s *stoppedDuringSweep) SweepRetries(ctx context.Context, now time.Time, quantum time.Duration, limit int) (store.SweepResult, error) {
	res, err := s.Store.SweepRetries(ctx, now, quantum, limit)
	if s.calls.Add(1) == s.at {
		if derr := s.Store.Remove(ctx, order.Retry, order.ControlKey, 0); derr != nil {
			err = derr
		}
	}
	return res, err
}

// TestRetriesStoppedDuringASweepStopIt: a sweep of many batches stops at
// the batch during which retries were stopped; the rest wait, paused.
func TestRetriesStoppedDuringASweepStopIt(t *testing.T) {
	st := openStore(t)
	ctx := context.Background()
	for i := range 35 {
		retryDoc(t, st, "r"+strings.Repeat("x", i), time.Minute)
	}
	_, err := st.Insert(ctx, order.Retry, order.ControlKey, []byte(`{}`))
	require.NoError(t, err)

	tm, err := timer.New(timer.Config{Interval: time.Second, SweepBatch: 10, Owner: "me"}, &stoppedDuringSweep{Store: st, at: 2}, quiet, nil)
	require.NoError(t, err)
	res, err := tm.Sweep(ctx, pinned)
	require.NoError(t, err)
	assert.Equal(t, timer.Result{Armed: true, Swept: true, Flagged: 10, Batches: 1, More: true, Ahead: true}, res)
	// The sends take them: the next sweep's window holds several batches.
	assert.Equal(t, 10, takeFlagged(t, st))
	res, err = tm.Sweep(ctx, pinned.Add(time.Second))
	require.NoError(t, err)
	assert.Equal(t, timer.Result{Armed: true, Swept: true, Flagged: 10, Batches: 1, More: true}, res, "stopped after its first batch")
	res, err = tm.Sweep(ctx, pinned.Add(2*time.Second))
	require.NoError(t, err)
	assert.Equal(t, timer.Result{}, res, "paused")
}

// gate is a circuit breaker's state as the timer asks it.
type gate struct{ held, probing atomic.Bool }

func (g *gate) HeldBack() (bool, bool) { return g.held.Load(), g.probing.Load() }

// refusedGate holds every send back because the email service refuses the
// configuration (as *mailer.Client says through Misconfigured).
type refusedGate struct{}

func (refusedGate) HeldBack() (bool, bool) { return true, false }
func (refusedGate) Misconfigured() string  { return "401 Unauthorized" }

// TestAHeldSweeperSaysWhyItLeftTheLease: the lease given up while sends
// are held says whether the configuration is refused or the breaker open
// (TestSweepWaitsWhileSendsAreHeldBack): `retries status` shows it.
func TestAHeldSweeperSaysWhyItLeftTheLease(t *testing.T) {
	st := openStore(t)
	ctx := context.Background()
	_, err := st.Insert(ctx, order.Retry, order.ControlKey, []byte(`{}`))
	require.NoError(t, err)
	var g gate
	tm, err := timer.New(timer.Config{Interval: time.Second, Owner: "a"}, st, quiet, nil)
	require.NoError(t, err)
	tm.SetGate(&g)
	_, err = tm.Sweep(ctx, pinned)
	require.NoError(t, err)
	require.Equal(t, timer.RoleActive, tm.Status().Role)
	tm.SetGate(refusedGate{})
	res, err := tm.Sweep(ctx, pinned.Add(time.Second))
	require.NoError(t, err)
	require.True(t, res.Held)
	h, err := timer.ReadSweeper(ctx, st)
	require.NoError(t, err)
	assert.Equal(t, "a", h.Left)
	assert.Equal(t, timer.LeftConfigured, h.Why)
}

// standbyGate is the gate of an instance whose feed does not run.
type standbyGate struct{}

func (standbyGate) HeldBack() (bool, bool) { return true, false }
func (standbyGate) Standby() bool          { return true }

// TestAStandbySaysSoNotHeld: an instance whose feed does not run (a
// standby on an embedded store) sweeps nothing, and says it is a standby:
// nothing of its is held back, and an operator reading "held" looks for a
// breaker that is closed.
func TestAStandbySaysSoNotHeld(t *testing.T) {
	st := openStore(t)
	ctx := context.Background()
	_, err := st.Insert(ctx, order.Retry, order.ControlKey, []byte(`{}`))
	require.NoError(t, err)
	retryDoc(t, st, "r", time.Minute)
	var logs syncbuf.Buffer
	active, err := timer.New(timer.Config{Interval: time.Second, Owner: "a"}, st, quiet, func() time.Time { return pinned })
	require.NoError(t, err)
	_, err = active.Sweep(ctx, pinned)
	require.NoError(t, err)
	tm, err := timer.New(timer.Config{Interval: 20 * time.Millisecond, Owner: "b"}, st, slog.New(slog.NewTextHandler(&logs, nil)), time.Now)
	require.NoError(t, err)
	// The sweeper whose feed stops (a stop under way, its lock lost) gives
	// the lease up saying so, not blaming a breaker.
	active.SetGate(standbyGate{})
	_, err = active.Sweep(ctx, pinned.Add(time.Second))
	require.NoError(t, err)
	h, err := timer.ReadSweeper(ctx, st)
	require.NoError(t, err)
	assert.Equal(t, timer.LeftNoFeed, h.Why)
	active.SetGate(nil) // its feed runs again: it sweeps, and holds the lease
	_, err = active.Sweep(ctx, pinned.Add(2*time.Second))
	require.NoError(t, err)
	require.Equal(t, timer.RoleActive, active.Status().Role)
	tm.SetGate(standbyGate{})
	res, err := tm.Sweep(ctx, pinned)
	require.NoError(t, err)
	assert.Equal(t, timer.Result{Armed: true, NoFeed: true}, res, "nothing swept, nothing held")
	assert.Equal(t, timer.RoleStandby, tm.Status().Role)
	assert.Equal(t, "a", tm.Status().Holder.Owner, "who sweeps, for its report (the sweeper's heartbeat age)")
	tm.Start()
	defer tm.Stop(ctx)
	require.Eventually(t, func() bool { return len(logs.Lines("feed does not run")) > 0 }, 20*time.Second, 10*time.Millisecond,
		"the tick says why it stands by; logs:\n%s", logs.String())
	assert.Empty(t, logs.Lines("held"), "nothing of its is held")
}

// TestAnInstanceSteppedAsideBlamesNoOtherProcess: the only instance, whose
// sweeps failed and which stepped aside, reads no lease holder: it stands by
// for the lease's TTL, and does not say that another instance holds the
// store.
func TestAnInstanceSteppedAsideBlamesNoOtherProcess(t *testing.T) {
	st := openStore(t)
	_, err := st.Insert(context.Background(), order.Retry, order.ControlKey, []byte(`{}`))
	require.NoError(t, err)
	var logs syncbuf.Buffer
	tm, err := timer.New(timer.Config{Interval: 50 * time.Millisecond, Owner: "only"}, brokenSweep{st},
		slog.New(slog.NewTextHandler(&logs, nil)), time.Now)
	require.NoError(t, err)
	tm.Start()
	defer tm.Stop(context.Background())
	// Aside a TTL, then sweeping, failing and stepping aside again.
	require.Eventually(t, func() bool { return len(logs.Lines("the sweep lease is left to another instance")) >= 2 }, time.Minute, 20*time.Millisecond,
		"it stepped aside twice; logs:\n%v", later.Value(func() any { return logs.String() }))
	assert.Empty(t, logs.Lines("feed does not run"), "no other process is there")
	assert.Empty(t, logs.Lines("another instance sweeps"), "nor is another said to sweep")
	assert.Empty(t, logs.Lines("sweeps work again"), "no sweep worked")
}

// TestAnInstanceWhoseSweepsFailSaysAnotherSweepsNow: one whose sweeps
// fail steps aside and another instance takes the sweep over: it says so,
// not that its sweeps work again.
func TestAnInstanceWhoseSweepsFailSaysAnotherSweepsNow(t *testing.T) {
	st := openStore(t)
	_, err := st.Insert(context.Background(), order.Retry, order.ControlKey, []byte(`{}`))
	require.NoError(t, err)
	var logs syncbuf.Buffer
	broken, err := timer.New(timer.Config{Interval: 50 * time.Millisecond, Owner: "broken"}, brokenSweep{st},
		slog.New(slog.NewTextHandler(&logs, nil)), time.Now)
	require.NoError(t, err)
	broken.Start()
	defer broken.Stop(context.Background())
	require.Eventually(t, func() bool { return len(logs.Lines("the sweep lease is left to another instance")) > 0 }, time.Minute, 20*time.Millisecond,
		"it stepped aside; logs:\n%v", later.Value(func() any { return logs.String() }))
	working, err := timer.New(timer.Config{Interval: 50 * time.Millisecond, Owner: "working"}, st, quiet, time.Now)
	require.NoError(t, err)
	working.Start()
	defer working.Stop(context.Background())
	require.Eventually(t, func() bool { return len(logs.Lines("another instance sweeps now")) > 0 }, time.Minute, 20*time.Millisecond,
		"the other took the sweep over; logs:\n%v", later.Value(func() any { return logs.String() }))
	assert.Empty(t, logs.Lines("sweeps work again"), "its sweeps never worked")
}

// readFails is a store whose reads of one document fail while fail is set.
type readFails struct {
	store.Store
	coll, key string
	fail      *atomic.Bool
}

func (s readFails) Get(ctx context.Context, coll, key string) (store.Doc, error) {
	if coll == s.coll && key == s.key && s.fail.Load() {
		return store.Doc{}, fmt.Errorf("read %s/%s failed", coll, key)
	}
	return s.Store.Get(ctx, coll, key)
}

// controlReadFails is a store whose reads of allow_retrys fail while fail
// is set.
func controlReadFails(st store.Store) (readFails, *atomic.Bool) {
	var fail atomic.Bool
	return readFails{Store: st, coll: order.Retry, key: order.ControlKey, fail: &fail}, &fail
}

// TestAStandbyWhoseTickFailedBlamesNoSweepOfItsOwn: a standby that never
// swept, one of whose ticks failed, says its ticks work again, not that
// its sweeps failed and another instance sweeps now.
func TestAStandbyWhoseTickFailedBlamesNoSweepOfItsOwn(t *testing.T) {
	st := openStore(t)
	ctx := context.Background()
	_, err := st.Insert(ctx, order.Retry, order.ControlKey, []byte(`{}`))
	require.NoError(t, err)
	a, err := timer.New(timer.Config{Interval: 50 * time.Millisecond, Owner: "a"}, st, quiet, time.Now)
	require.NoError(t, err)
	a.Start()
	defer a.Stop(ctx)
	require.Eventually(t, func() bool { return a.Status().Role == timer.RoleActive }, time.Minute, 5*time.Millisecond,
		"a sweeps; its role: %v", later.Value(func() any { return a.Status().Role }))

	var logs syncbuf.Buffer
	fs, fail := controlReadFails(st)
	b, err := timer.New(timer.Config{Interval: 50 * time.Millisecond, Owner: "b"}, fs, slog.New(slog.NewTextHandler(&logs, nil)), time.Now)
	require.NoError(t, err)
	b.Start()
	defer b.Stop(ctx)
	require.Eventually(t, func() bool { return b.Status().Role == timer.RoleStandby }, time.Minute, 5*time.Millisecond,
		"b stands by; its role: %v", later.Value(func() any { return b.Status().Role }))
	fail.Store(true)
	require.Eventually(t, func() bool { return len(logs.Lines("sweep failed")) > 0 }, time.Minute, 5*time.Millisecond,
		"a tick of b's failed; logs:\n%v", later.Value(func() any { return logs.String() }))
	fail.Store(false)
	require.Eventually(t, func() bool { return len(logs.Lines("the timer's ticks work again")) > 0 }, time.Minute, 5*time.Millisecond,
		"b's ticks work again; logs:\n%v", later.Value(func() any { return logs.String() }))
	assert.Empty(t, logs.Lines("another instance sweeps now"), "b never swept, nor stepped aside")
}

// TestEachRunOfFailedTicksIsWarned: ticks fail (warned), then work
// without sweeping (sends held back), then fail again: the second run is
// warned too, not logged at debug as the first one's continuation.
func TestEachRunOfFailedTicksIsWarned(t *testing.T) {
	st := openStore(t)
	ctx := context.Background()
	_, err := st.Insert(ctx, order.Retry, order.ControlKey, []byte(`{}`))
	require.NoError(t, err)
	var logs syncbuf.Buffer
	fs, fail := controlReadFails(st)
	var g gate
	tm, err := timer.New(timer.Config{Interval: 50 * time.Millisecond, Owner: "a"}, fs,
		slog.New(slog.NewJSONHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug})), time.Now)
	require.NoError(t, err)
	tm.SetGate(&g)
	tm.Start()
	defer tm.Stop(ctx)
	require.Eventually(t, func() bool { return tm.Status().Role == timer.RoleActive }, time.Minute, 5*time.Millisecond,
		"it sweeps; its role: %v", later.Value(func() any { return tm.Status().Role }))
	fail.Store(true)
	require.Eventually(t, func() bool { return tm.Status().SweepErrors >= 1 }, time.Minute, time.Millisecond, "a tick failed")
	g.held.Store(true) // ticks work, and sweep nothing
	fail.Store(false)
	waitTicks(t, tm, 3)
	fail.Store(true)
	n := tm.Status().SweepErrors
	require.Eventually(t, func() bool { return tm.Status().SweepErrors >= n+3 }, time.Minute, time.Millisecond, "ticks failed again")
	assert.Len(t, infoLines(t, &logs, "sweep failed"), 2, "one warning each run; logs:\n%s", logs.String())
	assert.Len(t, infoLines(t, &logs, "the timer's ticks work again"), 1, "the first run's end, with no sweep")
}

// leaseWriteFails fails writes of the sweep lease while fail is set.
type leaseWriteFails struct {
	store.Store
	fail atomic.Bool
}

func (s *leaseWriteFails) Replace(ctx context.Context, coll, key string, value []byte, cas uint64) (uint64, error) {
	if coll == store.Meta && s.fail.Load() {
		return 0, store.ErrUnavailable
	}
	return s.Store.Replace(ctx, coll, key, value, cas)
}

// TestHeldSendsWhoseLeaseCannotBeGivenUpAreHeld: sends held back and the
// sweep lease not given up (its write failing): the timer flags nothing,
// and says it is held (not the active sweeper), polling for the end.
func TestHeldSendsWhoseLeaseCannotBeGivenUpAreHeld(t *testing.T) {
	st := openStore(t)
	ctx := context.Background()
	_, err := st.Insert(ctx, order.Retry, order.ControlKey, []byte(`{}`))
	require.NoError(t, err)
	ls := &leaseWriteFails{Store: st}
	var g gate
	tm, err := timer.New(timer.Config{Interval: time.Second, Owner: "a"}, ls, quiet, nil)
	require.NoError(t, err)
	tm.SetGate(&g)
	_, err = tm.Sweep(ctx, pinned)
	require.NoError(t, err)
	require.Equal(t, timer.RoleActive, tm.Status().Role)
	g.held.Store(true)
	ls.fail.Store(true)
	res, err := tm.Sweep(ctx, pinned.Add(time.Second))
	require.ErrorIs(t, err, store.ErrUnavailable)
	assert.True(t, res.Held)
	assert.Equal(t, timer.RoleHeld, tm.Status().Role)

	// The store back, still held: the lease is given up at the next tick.
	ls.fail.Store(false)
	_, err = tm.Sweep(ctx, pinned.Add(2*time.Second))
	require.NoError(t, err)
	h, err := timer.ReadSweeper(ctx, st)
	require.NoError(t, err)
	assert.Empty(t, h.Owner, "given up")
	assert.Equal(t, "a", h.Left)
}

// TestSweepWaitsWhileSendsAreHeldBack: while an instance's sends are all
// held back (its breaker open) its sweep flags nothing, which would only
// be held and written again, and it leaves the lease to an instance whose
// sends go out; while its breaker lets a probe through it flags one due
// retry a tick; once sends go out it flags the backlog.
func TestSweepWaitsWhileSendsAreHeldBack(t *testing.T) {
	st := openStore(t)
	ctx := context.Background()
	now := pinned
	clock := func() time.Time { return now }
	var ga, gb gate
	a, err := timer.New(timer.Config{Interval: time.Second, Owner: "a"}, st, quiet, clock)
	require.NoError(t, err)
	a.SetGate(&ga)
	b, err := timer.New(timer.Config{Interval: time.Second, Owner: "b"}, st, quiet, clock)
	require.NoError(t, err)
	b.SetGate(&gb)
	_, err = st.Insert(ctx, order.Retry, order.ControlKey, []byte(`{}`))
	require.NoError(t, err)
	for i := range 5 {
		retryDoc(t, st, fmt.Sprint("r", i), time.Minute)
	}
	flagged := func() int {
		c, err := st.Counts(ctx)
		require.NoError(t, err)
		return c.RetryFlagged
	}

	res, err := a.Sweep(ctx, now)
	require.NoError(t, err)
	require.True(t, res.Swept, "a sweeps")
	assert.Equal(t, 5, res.Flagged)
	for i := range 5 { // sent, failed, written back unflagged: due again later
		retryDoc(t, st, fmt.Sprint("r", i), time.Minute)
	}

	ga.held.Store(true)
	gb.held.Store(true)
	now = now.Add(time.Second)
	res, err = a.Sweep(ctx, now)
	require.NoError(t, err)
	assert.Equal(t, timer.Result{Armed: true, Held: true}, res)
	assert.Equal(t, timer.RoleHeld, a.Status().Role)
	h, err := timer.ReadSweeper(ctx, st)
	require.NoError(t, err)
	assert.Empty(t, h.Owner, "a gave the lease up")
	assert.Equal(t, "a", h.Left)
	assert.Equal(t, timer.LeftBreaker, h.Why, "the lease says why: an operator's status shows it")
	res, err = b.Sweep(ctx, now)
	require.NoError(t, err)
	assert.Equal(t, timer.Result{Armed: true, Held: true}, res, "b's sends are held too")
	assert.Zero(t, flagged(), "nothing flagged while every send is held back")

	gb.held.Store(false) // b's sends go out (a's path to the email service is broken)
	now = now.Add(time.Second)
	res, err = b.Sweep(ctx, now)
	require.NoError(t, err)
	assert.True(t, res.Swept, "b took the lease a gave up, at once")
	assert.Equal(t, 5, res.Flagged)
	for i := range 5 {
		retryDoc(t, st, fmt.Sprint("r", i), time.Minute)
	}

	// An outage: b's breaker opens too, then lets a probe through.
	gb.held.Store(true)
	now = now.Add(time.Second)
	res, err = b.Sweep(ctx, now)
	require.NoError(t, err)
	assert.True(t, res.Held)
	gb.held.Store(false)
	gb.probing.Store(true)
	now = now.Add(time.Second)
	res, err = b.Sweep(ctx, now)
	require.NoError(t, err)
	assert.Equal(t, timer.Result{Armed: true, Swept: true, Probe: true, Flagged: 1, Batches: 1, More: true}, res, "one probe")
	assert.Equal(t, 1, flagged())
	now = now.Add(250 * time.Millisecond) // the next poll, the probe still out
	res, err = b.Sweep(ctx, now)
	require.NoError(t, err)
	assert.Equal(t, timer.Result{Armed: true, Probe: true}, res, "no second probe within the interval")

	gb.probing.Store(false)               // the probe got through: the breaker closed
	now = now.Add(250 * time.Millisecond) // the next poll, not a whole interval later
	res, err = b.Sweep(ctx, now)
	require.NoError(t, err)
	assert.Equal(t, 4, res.Flagged, "the rest at once")
	assert.Equal(t, 5, flagged())
}

// TestSweepFlagsABacklogInBatches: a backlog larger than a batch is
// flagged batch by batch, each its own transaction, until none is left;
// with no budget left, the rest waits for the next tick.
// TestSweepFlagsABacklogInBatches: a backlog is flagged in batches of
// SweepBatch, no further ahead of the sends than they take (pace: one
// batch at first), and within the sweep's budget.
func TestSweepFlagsABacklogInBatches(t *testing.T) {
	st := openStore(t)
	ctx := context.Background()
	for i := range 25 {
		retryDoc(t, st, "r"+strings.Repeat("x", i), time.Minute)
	}
	_, err := st.Insert(ctx, order.Retry, order.ControlKey, []byte(`{}`))
	require.NoError(t, err)

	tm, err := timer.New(timer.Config{Interval: time.Second, SweepBatch: 10, Owner: "me"}, st, quiet, nil)
	require.NoError(t, err)
	res, err := tm.Sweep(ctx, pinned)
	require.NoError(t, err)
	assert.Equal(t, timer.Result{Armed: true, Swept: true, Flagged: 10, Batches: 1, More: true, Ahead: true}, res,
		"the first sweep flags one batch ahead of the sends")
	res, err = tm.Sweep(ctx, pinned)
	require.NoError(t, err)
	assert.Equal(t, timer.Result{Armed: true, Swept: true, Ahead: true}, res, "none taken: none more flagged")

	assert.Equal(t, 10, takeFlagged(t, st))
	// Nothing moved at the last sweep: the next waits for the interval.
	res, err = tm.Sweep(ctx, pinned.Add(time.Second))
	require.NoError(t, err)
	assert.Equal(t, timer.Result{Armed: true, Swept: true, Flagged: 15, Batches: 2}, res,
		"the sends took the whole window while a backlog waited: at least four times as many")

	assert.Equal(t, 15, takeFlagged(t, st))
	for i := range 50 {
		retryDoc(t, st, "s"+strings.Repeat("x", i), time.Minute)
	}
	// A budget spent after the first batch (the smallest there is).
	tight, err := timer.New(timer.Config{Interval: time.Second, SweepBatch: 10, SweepBudget: time.Nanosecond, Owner: "me"}, st, quiet, nil)
	require.NoError(t, err)
	res, err = tight.Sweep(ctx, pinned)
	require.NoError(t, err)
	assert.Equal(t, timer.Result{Armed: true, Swept: true, Flagged: 10, Batches: 1, More: true, Ahead: true}, res)
	assert.Equal(t, 10, takeFlagged(t, st))
	res, err = tight.Sweep(ctx, pinned)
	require.NoError(t, err)
	assert.Equal(t, timer.Result{Armed: true, Swept: true, Flagged: 10, Batches: 1, More: true}, res,
		"the window has room left; the budget stopped the sweep")
}

// takeFlagged removes the flagged retries, as sends that went out would,
// and says how many.
func takeFlagged(t *testing.T, st store.Store) int {
	t.Helper()
	n, err := removeFlagged(st)
	require.NoError(t, err)
	return n
}

// removeFlagged removes the flagged retries and says how many; for
// conditions of Eventually, which must not stop the test.
func removeFlagged(st store.Store) (int, error) {
	ctx := context.Background()
	var keys []string
	err := st.Scan(ctx, order.Retry, "", func(d store.Doc) error {
		if r, err := order.DecodeRetryDoc(d.Value); err == nil && r.FireRetry {
			keys = append(keys, d.Key)
		}
		return nil
	})
	if err != nil {
		return 0, err
	}
	for i, k := range keys {
		if err := st.Remove(ctx, order.Retry, k, 0); err != nil {
			return i, err
		}
	}
	return len(keys), nil
}

// jsonLogs is a JSON logger at debug into buf.
func jsonLogs(buf *syncbuf.Buffer) *slog.Logger {
	return slog.New(slog.NewJSONHandler(buf, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// infoLines are the lines at info or above whose message starts with msg.
func infoLines(t *testing.T, buf *syncbuf.Buffer, msg string) []map[string]any {
	t.Helper()
	var out []map[string]any
	for _, line := range strings.Split(strings.TrimSpace(buf.String()), "\n") {
		var m map[string]any
		if json.Unmarshal([]byte(line), &m) != nil {
			continue
		}
		if s, _ := m["msg"].(string); strings.HasPrefix(s, msg) && m["level"] != "DEBUG" {
			out = append(out, m)
		}
	}
	return out
}

// waitTicks waits for n more successful ticks.
func waitTicks(t *testing.T, tm *timer.Timer, n int64) {
	t.Helper()
	from := tm.Ticks()
	require.Eventually(t, func() bool { return tm.Ticks() >= from+n }, 30*time.Second, 2*time.Millisecond,
		"%d more ticks from %d; ticks: %v (role %q)", n, from,
		later.Value(func() any { return tm.Ticks() }), later.Value(func() any { return tm.Status().Role }))
}

// TestOneLinePerStateChange: paused, armed with the settings in effect,
// settings changed, paused again, and this instance sweeping: one line
// each at info, however many ticks go by; durations are strings.
func TestOneLinePerStateChange(t *testing.T) {
	st := openStore(t)
	ctx := context.Background()
	var logs syncbuf.Buffer
	tm, err := timer.New(timer.Config{Interval: 10 * time.Millisecond, Quantum: 15 * time.Second, Owner: "me"}, st, jsonLogs(&logs), nil)
	require.NoError(t, err)
	tm.Start()
	defer func() { assert.NoError(t, tm.Stop(context.Background())) }()

	waitTicks(t, tm, 5)
	assert.Equal(t, timer.RolePaused, tm.Status().Role)
	assert.Len(t, infoLines(t, &logs, "retries paused"), 1)

	_, err = st.Upsert(ctx, order.Retry, order.ControlKey, []byte(`{"interval":"30ms","quantum":"1m"}`))
	require.NoError(t, err)
	require.Eventually(t, func() bool { return len(infoLines(t, &logs, "retries armed")) == 1 }, 30*time.Second, 2*time.Millisecond,
		"%q lines at info: want 1, have %v; logs:\n%v", "retries armed",
		later.Value(func() any { return len(infoLines(t, &logs, "retries armed")) }), later.Value(func() any { return logs.String() }))
	waitTicks(t, tm, 5)
	armed := infoLines(t, &logs, "retries armed")
	require.Len(t, armed, 1)
	assert.Equal(t, "30ms", armed[0]["interval"], "allow_retrys' settings, not the flags'")
	assert.Equal(t, "1m0s", armed[0]["quantum"])
	assert.Len(t, infoLines(t, &logs, "this instance sweeps"), 1)
	s := tm.Status()
	assert.Equal(t, timer.RoleActive, s.Role)
	assert.Equal(t, 30*time.Millisecond, s.Interval)
	assert.Equal(t, time.Minute, s.Quantum)
	assert.False(t, s.LastSweep.IsZero())

	_, err = st.Upsert(ctx, order.Retry, order.ControlKey, []byte(`{"quantum":"2m"}`))
	require.NoError(t, err)
	require.Eventually(t, func() bool { return len(infoLines(t, &logs, "retry settings changed")) == 1 }, 30*time.Second, 2*time.Millisecond,
		"%q lines at info: want 1, have %v; logs:\n%v", "retry settings changed",
		later.Value(func() any { return len(infoLines(t, &logs, "retry settings changed")) }), later.Value(func() any { return logs.String() }))
	waitTicks(t, tm, 5)
	changed := infoLines(t, &logs, "retry settings changed")
	require.Len(t, changed, 1)
	assert.Equal(t, "10ms", changed[0]["interval"])
	assert.Equal(t, "2m0s", changed[0]["quantum"])

	require.NoError(t, st.Remove(ctx, order.Retry, order.ControlKey, 0))
	require.Eventually(t, func() bool { return len(infoLines(t, &logs, "retries paused")) == 2 }, 30*time.Second, 2*time.Millisecond,
		"%q lines at info: want 2, have %v; logs:\n%v", "retries paused",
		later.Value(func() any { return len(infoLines(t, &logs, "retries paused")) }), later.Value(func() any { return logs.String() }))
	waitTicks(t, tm, 5)
	assert.Len(t, infoLines(t, &logs, "retries paused"), 2)
	assert.Len(t, infoLines(t, &logs, "retries armed"), 1)

	started := infoLines(t, &logs, "timer started")
	require.Len(t, started, 1)
	assert.Equal(t, "10ms", started[0]["interval"], "a duration is a string in JSON logs")
	assert.Equal(t, "15s", started[0]["quantum"])
}

// startHeld starts a timer with the given interval on an armed store, its
// sends held back (g.held) until the test says otherwise; it is stopped at
// the test's end.
func startHeld(t *testing.T, interval time.Duration, log *slog.Logger) (*timer.Timer, *gate) {
	t.Helper()
	st := openStore(t)
	_, err := st.Insert(context.Background(), order.Retry, order.ControlKey, []byte(`{}`))
	require.NoError(t, err)
	tm, err := timer.New(timer.Config{Interval: interval, Owner: "me"}, st, log, nil)
	require.NoError(t, err)
	g := &gate{}
	g.held.Store(true)
	tm.SetGate(g)
	tm.Start()
	t.Cleanup(func() { assert.NoError(t, tm.Stop(context.Background())) })
	return tm, g
}

// TestOneLineAnOutage: an instance whose sends are held logs it once; the
// probe a cooldown lets through, and the hold after it, log nothing; sends
// going out again is one line.
func TestOneLineAnOutage(t *testing.T) {
	var logs syncbuf.Buffer
	tm, g := startHeld(t, 10*time.Millisecond, jsonLogs(&logs))
	waitTicks(t, tm, 3)
	for range 3 { // three cooldowns: a probe each, failing
		g.held.Store(false)
		g.probing.Store(true)
		waitTicks(t, tm, 2)
		g.probing.Store(false)
		g.held.Store(true)
		waitTicks(t, tm, 2)
	}
	assert.Len(t, infoLines(t, &logs, "sweep held"), 1)
	assert.Empty(t, infoLines(t, &logs, "this instance sweeps"), "a probe is no change of role worth a line")
	g.held.Store(false)
	require.Eventually(t, func() bool { return tm.Status().Role == timer.RoleActive }, 30*time.Second, 2*time.Millisecond,
		"role %q once sends are no longer held; role: %q", timer.RoleActive, later.Value(func() any { return tm.Status().Role }))
	waitTicks(t, tm, 2)
	assert.Len(t, infoLines(t, &logs, "sends go out again"), 1)
	assert.Len(t, infoLines(t, &logs, "sweep held"), 1)
}

// TestHeldTimerPolls: while sends are held back the timer ticks at the
// paused poll, whatever its interval, so that the probe goes out within a
// poll of the breaker's cooldown ending, and the backlog within one of its
// closing.
func TestHeldTimerPolls(t *testing.T) {
	var logs syncbuf.Buffer
	tm, g := startHeld(t, time.Hour, jsonLogs(&logs))
	waitTicks(t, tm, 3)
	assert.Equal(t, timer.RoleHeld, tm.Status().Role)
	g.held.Store(false)
	g.probing.Store(true)
	waitTicks(t, tm, 3) // probing, polling still
	assert.Equal(t, timer.RoleActive, tm.Status().Role)
	// The probe is still out (a service that does not answer): the polls
	// after it sweep nothing and say nothing.
	assert.Empty(t, infoLines(t, &logs, "sends go out again"), "the probe has not got through")
}

// failingStore fails every read of allow_retrys.
type failingStore struct{ store.Store }

func (f failingStore) Get(ctx context.Context, coll, key string) (store.Doc, error) {
	if key == order.ControlKey {
		return store.Doc{}, store.ErrUnavailable
	}
	return f.Store.Get(ctx, coll, key)
}

// TestFailedTicksAreNotTicks: a tick whose sweep fails counts as a sweep
// error, not a tick, and is logged once until sweeps work again.
func TestFailedTicksAreNotTicks(t *testing.T) {
	var logs syncbuf.Buffer
	tm, err := timer.New(timer.Config{Interval: 10 * time.Millisecond}, failingStore{openStore(t)}, jsonLogs(&logs), nil)
	require.NoError(t, err)
	tm.Start()
	defer func() { assert.NoError(t, tm.Stop(context.Background())) }()
	require.Eventually(t, func() bool { return tm.Status().SweepErrors >= 5 }, 30*time.Second, 2*time.Millisecond,
		"5 sweep errors; sweep errors: %v", later.Value(func() any { return tm.Status().SweepErrors }))
	assert.Zero(t, tm.Ticks())
	assert.Len(t, infoLines(t, &logs, "sweep failed"), 1)
	assert.Empty(t, tm.Stalled(), "failing ticks are still ticks for the liveness check")
}

// stallingStore hangs reads of allow_retrys until released, ignoring
// their context.
type stallingStore struct {
	store.Store
	release chan struct{}
}

func (s stallingStore) Get(ctx context.Context, coll, key string) (store.Doc, error) {
	<-s.release
	return s.Store.Get(ctx, coll, key)
}

func TestStalledWhenATickNeverEnds(t *testing.T) {
	ss := stallingStore{Store: openStore(t), release: make(chan struct{})}
	tm, err := timer.New(timer.Config{Interval: 10 * time.Millisecond}, ss, quiet, nil)
	require.NoError(t, err)
	assert.Empty(t, tm.Stalled(), "not started: nothing to say")
	tm.Start()
	assert.Empty(t, tm.Stalled(), "just started")
	// Three intervals and a tick's own bound (1s).
	require.Eventually(t, func() bool { return tm.Stalled() != "" }, 30*time.Second, 5*time.Millisecond,
		"stalled while a tick hangs; Stalled(): %q", later.Value(func() any { return tm.Stalled() }))
	assert.Contains(t, tm.Stalled(), "no tick finished for")
	close(ss.release)
	require.Eventually(t, func() bool { return tm.Stalled() == "" }, 30*time.Second, 5*time.Millisecond,
		"no longer stalled once the tick is released; Stalled(): %q", later.Value(func() any { return tm.Stalled() }))
	require.NoError(t, tm.Stop(context.Background()))
	assert.Empty(t, tm.Stalled(), "stopped")
}

// TestStandbyReportsTheSweepersHeartbeat: a standby knows who sweeps and
// how long ago it renewed its lease; when the holder stops renewing, the
// standby takes over with a warning.
func TestStandbyReportsTheSweepersHeartbeat(t *testing.T) {
	st := openStore(t)
	ctx := context.Background()
	_, err := st.Insert(ctx, order.Retry, order.ControlKey, []byte(`{}`))
	require.NoError(t, err)

	now := pinned
	clock := func() time.Time { return now }
	a, err := timer.New(timer.Config{Interval: time.Second, Owner: "a"}, st, quiet, clock)
	require.NoError(t, err)
	b, err := timer.New(timer.Config{Interval: time.Second, Owner: "b"}, st, quiet, clock)
	require.NoError(t, err)
	_, err = a.Sweep(ctx, now)
	require.NoError(t, err)
	now = now.Add(1500 * time.Millisecond)
	_, err = b.Sweep(ctx, now)
	require.NoError(t, err)
	s := b.Status()
	assert.Equal(t, timer.RoleStandby, s.Role)
	assert.Equal(t, "a", s.Holder.Owner)
	assert.Equal(t, 1500*time.Millisecond, s.HeartbeatAge)
	assert.Equal(t, timer.RoleActive, a.Status().Role)

	// A real b, ticking, while a stands still holding the lease: b waits,
	// then takes over once a's lease (3s) has run out, and says so.
	var logs syncbuf.Buffer
	c, err := timer.New(timer.Config{Interval: 20 * time.Millisecond, Owner: "c"}, st, jsonLogs(&logs), nil)
	require.NoError(t, err)
	a2, err := timer.New(timer.Config{Interval: 20 * time.Millisecond, Owner: "a"}, st, quiet, nil)
	require.NoError(t, err)
	_, err = a2.Sweep(ctx, time.Now()) // a holds it, on the real clock, and stops renewing
	require.NoError(t, err)
	c.Start()
	defer func() { assert.NoError(t, c.Stop(context.Background())) }()
	// The role is published by the tick, the line logged after it: wait
	// for the line.
	require.Eventually(t, func() bool { return len(infoLines(t, &logs, "standby: another instance sweeps")) > 0 },
		10*time.Second, 2*time.Millisecond, "c never logged that it stands by: %s", &logs)
	assert.Len(t, infoLines(t, &logs, "standby: another instance sweeps"), 1)
	assert.Equal(t, "a", c.Status().Holder.Owner)
	require.Eventually(t, func() bool { return len(infoLines(t, &logs, "took over the sweep")) > 0 }, 30*time.Second, 5*time.Millisecond,
		"c took over once a's lease ran out; role %q, holder %q; logs:\n%v",
		later.Value(func() any { return c.Status().Role }), later.Value(func() any { return c.Status().Holder.Owner }),
		later.Value(func() any { return logs.String() }))
	assert.Equal(t, timer.RoleActive, c.Status().Role)
	took := infoLines(t, &logs, "took over the sweep")
	require.Len(t, took, 1, logs.String())
	assert.Equal(t, "WARN", took[0]["level"])
	assert.Equal(t, "a", took[0]["previous_holder"])
	assert.IsType(t, "", took[0]["heartbeat_age"])
	assert.Empty(t, infoLines(t, &logs, "this instance sweeps"), "the takeover's line is the one")
}

// lateLeaseStore holds the lease's first write (an insert into Meta) until
// released. Like a real store, a write whose caller gave up is still made,
// once released.
type lateLeaseStore struct {
	store.Store
	entered chan context.Context // the insert's context, once it is held
	release chan struct{}
	late    sync.WaitGroup
}

func (s *lateLeaseStore) Insert(ctx context.Context, coll, key string, value []byte) (uint64, error) {
	if coll != store.Meta {
		return s.Store.Insert(ctx, coll, key, value)
	}
	s.entered <- ctx
	select {
	case <-s.release:
		return s.Store.Insert(ctx, coll, key, value)
	case <-ctx.Done():
		s.late.Go(func() {
			<-s.release
			_, _ = s.Store.Insert(context.Background(), coll, key, value)
		})
		return 0, ctx.Err()
	}
}

// TestStopLeavesNoLeaseBehind: the tick's lease write is in flight when
// its context ends (Stop cancels it). The write is not given up, so it
// lands before Stop releases the lease, and no sweeper is left holding it.
// It used to be cancelled with the tick and made after the release: the
// lease stayed held until it expired (TestDemoKeepsDataWhenAsked saw it
// under load).
func TestStopLeavesNoLeaseBehind(t *testing.T) {
	newStore := func() *lateLeaseStore {
		ls := &lateLeaseStore{Store: openStore(t), entered: make(chan context.Context, 1), release: make(chan struct{})}
		_, err := ls.Upsert(context.Background(), order.Retry, order.ControlKey, []byte(`{}`))
		require.NoError(t, err)
		return ls
	}
	held := func(ls *lateLeaseStore) context.Context {
		t.Helper()
		select {
		case ctx := <-ls.entered:
			return ctx
		case <-time.After(10 * time.Second):
			t.Fatal("no lease write within 10s")
			return nil
		}
	}

	// A sweep whose context ends while its lease write is held.
	ls := newStore()
	tm, err := timer.New(timer.Config{Interval: time.Hour}, ls, quiet, nil)
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	swept := make(chan error, 1)
	go func() {
		_, err := tm.Sweep(ctx, pinned)
		swept <- err
	}()
	insertCtx := held(ls)
	cancel()
	assert.NoError(t, insertCtx.Err(), "the lease write's context ended with the sweep's")
	close(ls.release)
	<-swept
	ls.late.Wait()

	// Stop while the first tick's lease write is held.
	ls = newStore()
	tm, err = timer.New(timer.Config{Interval: 10 * time.Millisecond}, ls, quiet, nil)
	require.NoError(t, err)
	tm.Start()
	held(ls)
	stopped := make(chan error, 1)
	go func() { stopped <- tm.Stop(context.Background()) }()
	// Released only once Stop has cancelled the tick, so that the write
	// lands after that, as the store may make it.
	if !assert.Eventually(t, func() bool { return !tm.Status().Started }, 30*time.Second, time.Millisecond) {
		t.Fatal("Stop did not cancel the ticks")
	}
	close(ls.release)
	require.NoError(t, <-stopped)
	ls.late.Wait()
	h, err := timer.ReadSweeper(context.Background(), ls)
	require.NoError(t, err)
	assert.Empty(t, h.Owner, "a sweeper is left holding the lease after Stop (until %s)", h.ExpiresAt)
	assert.Equal(t, timer.LeftStopped, h.Why, "the lease says the sweeper stopped")
}

// TestArmedByOtherMeansDropsWhatAPauseKept: allow_retrys created by hand
// after a pause (not by a resume, which gives the pause's settings back
// itself) has the settings that stand: the timer that saw it paused drops
// the ones the pause kept, lest a later resume give them back. Settings
// kept after it saw the pause (a pause under way) stay.
func TestArmedByOtherMeansDropsWhatAPauseKept(t *testing.T) {
	st := openStore(t)
	ctx := context.Background()
	tm, err := timer.New(timer.Config{Interval: time.Second}, st, quiet, nil)
	require.NoError(t, err)
	keep := func(at time.Time) {
		t.Helper()
		b := order.KeptControl{Control: order.Control{Interval: time.Minute}, PausedAt: at}.Encode()
		_, err := st.Upsert(ctx, store.Meta, order.KeptControlKey, b)
		require.NoError(t, err)
	}
	kept := func() bool {
		_, err := st.Get(ctx, store.Meta, order.KeptControlKey)
		return err == nil
	}

	keep(time.Now().Add(-time.Second)) // a pause over before the tick below
	_, err = tm.Sweep(ctx, pinned)     // paused
	require.NoError(t, err)
	_, err = st.Insert(ctx, order.Retry, order.ControlKey, []byte(`{"quantum":"5m"}`)) // armed by hand
	require.NoError(t, err)
	_, err = tm.Sweep(ctx, pinned)
	require.NoError(t, err)
	assert.False(t, kept(), "the settings kept before the arming were dropped")

	// Paused and seen so, then kept by a pause the tick saw none of.
	require.NoError(t, st.Remove(ctx, order.Retry, order.ControlKey, 0))
	_, err = tm.Sweep(ctx, pinned)
	require.NoError(t, err)
	_, err = st.Insert(ctx, order.Retry, order.ControlKey, []byte(`{}`))
	require.NoError(t, err)
	keep(time.Now().Add(time.Second))
	_, err = tm.Sweep(ctx, pinned)
	require.NoError(t, err)
	assert.True(t, kept(), "the settings of a pause after the one seen stay")

	// Armed all along: nothing seen paused, nothing dropped.
	keep(time.Now().Add(-time.Hour))
	_, err = tm.Sweep(ctx, pinned)
	require.NoError(t, err)
	assert.True(t, kept())

	// A timer started while armed (the arming by hand came while no
	// service watched) drops what was kept before it started.
	later, err := timer.New(timer.Config{Interval: time.Second}, st, quiet, nil)
	require.NoError(t, err)
	_, err = later.Sweep(ctx, pinned)
	require.NoError(t, err)
	assert.False(t, kept(), "kept an hour before the timer started, found armed: stale")
}

// TestSettingsKeptOutOfReachAreSaidOnce: settings a pause kept that the
// timer cannot see to are tried again every tick, said once while that
// fails, and dropped once they can be.
func TestSettingsKeptOutOfReachAreSaidOnce(t *testing.T) {
	st := openStore(t)
	ctx := context.Background()
	var logs syncbuf.Buffer
	var down atomic.Bool
	down.Store(true)
	tm, err := timer.New(timer.Config{Interval: time.Second}, readFails{Store: st, coll: store.Meta, key: order.KeptControlKey, fail: &down}, jsonLogs(&logs), nil)
	require.NoError(t, err)
	_, err = st.Upsert(ctx, store.Meta, order.KeptControlKey,
		order.KeptControl{Control: order.Control{Interval: time.Minute}, PausedAt: time.Now().Add(-time.Hour)}.Encode())
	require.NoError(t, err)
	_, err = st.Insert(ctx, order.Retry, order.ControlKey, []byte(`{}`))
	require.NoError(t, err)
	for range 5 {
		_, err = tm.Sweep(ctx, pinned)
		require.NoError(t, err)
	}
	assert.Len(t, infoLines(t, &logs, "could not see to the settings a pause kept"), 1, "%s", logs.String())
	down.Store(false)
	_, err = tm.Sweep(ctx, pinned)
	require.NoError(t, err)
	_, err = st.Get(ctx, store.Meta, order.KeptControlKey)
	assert.ErrorIs(t, err, store.ErrNotFound, "dropped once readable")
}

// pauseAfterRead deletes allow_retrys (retries stop) right after the
// tick's first read of it, while the tick goes on to its lease.
type pauseAfterRead struct {
	store.Store
	once sync.Once
}

func (s *pauseAfterRead) Get(ctx context.Context, coll, key string) (store.Doc, error) {
	d, err := s.Store.Get(ctx, coll, key)
	if coll == order.Retry && key == order.ControlKey && err == nil {
		s.once.Do(func() {
			if rerr := s.Store.Remove(ctx, order.Retry, order.ControlKey, d.CAS); rerr != nil {
				panic(rerr) // no test goroutine to fail from here
			}
		})
	}
	return d, err
}

// A pause that comes after a tick read allow_retrys, and before its first
// batch, stops that batch too.
func TestAPauseBeforeATicksFirstBatchFlagsNothing(t *testing.T) {
	st := openStore(t)
	ctx := context.Background()
	for i := range 50 {
		retryDoc(t, st, fmt.Sprintf("r%02d", i), time.Hour)
	}
	_, err := st.Insert(ctx, order.Retry, order.ControlKey, []byte(`{}`))
	require.NoError(t, err)
	tm, err := timer.New(timer.Config{Interval: time.Second, Owner: "me"}, &pauseAfterRead{Store: st}, quiet, nil)
	require.NoError(t, err)
	res, err := tm.Sweep(ctx, pinned)
	require.NoError(t, err)
	assert.Zero(t, res.Flagged, "flagged after retries stop returned")
	assert.False(t, fired(t, st, "r00"))
}

// TestABacklogIsToppedUpAsTheSendsTakeIt: a sweep that stopped at its
// window tops it up every pausedPoll as the sends take it, however long
// the interval: a minute's ticks with a window of 10 would drain 100
// retries in ten minutes.
func TestABacklogIsToppedUpAsTheSendsTakeIt(t *testing.T) {
	st := openStore(t)
	ctx := context.Background()
	for i := range 100 {
		retryDoc(t, st, fmt.Sprintf("r%03d", i), time.Minute)
	}
	_, err := st.Insert(ctx, order.Retry, order.ControlKey, []byte(`{}`))
	require.NoError(t, err)
	tm, err := timer.New(timer.Config{Interval: time.Minute, SweepBatch: 10, Owner: "me"}, st, quiet, time.Now)
	require.NoError(t, err)
	tm.Start()
	defer func() { assert.NoError(t, tm.Stop(context.Background())) }()

	// The sends: each look takes what is flagged.
	var taken atomic.Int64
	require.Eventually(t, func() bool {
		n, err := removeFlagged(st)
		taken.Add(int64(n))
		if err != nil {
			t.Logf("take flagged retries: %v", err)
		}
		return taken.Load() >= 100
	}, 60*time.Second, 20*time.Millisecond, "flagged and taken: %v of 100; ticks %v", later.Value(func() any { return taken.Load() }),
		later.Value(func() any { return tm.Ticks() }))
}

// TestAClockSteppedBackStopsNoSweep: the clock stepped back an hour
// (NTP, a restored VM) after sweeps ran: a retry due on the new clock is
// flagged at the next ticks, not an hour later.
func TestAClockSteppedBackStopsNoSweep(t *testing.T) {
	st := openStore(t)
	ctx := context.Background()
	var mu sync.Mutex
	now := pinned
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	_, err := st.Insert(ctx, order.Retry, order.ControlKey, []byte(`{}`))
	require.NoError(t, err)
	tm, err := timer.New(timer.Config{Interval: 20 * time.Millisecond, Owner: "me"}, st, quiet, clock)
	require.NoError(t, err)
	tm.Start()
	defer func() { assert.NoError(t, tm.Stop(context.Background())) }()
	waitTicks(t, tm, 3)
	require.Equal(t, timer.RoleActive, tm.Status().Role)

	mu.Lock()
	now = pinned.Add(-time.Hour)
	mu.Unlock()
	r := order.RetryDoc{Type: order.TypeConfirmation, DocID: "late"}.Failed(pinned.Add(-time.Hour - time.Minute))
	_, err = st.Upsert(ctx, order.Retry, "late", r.Encode())
	require.NoError(t, err)
	require.Eventually(t, func() bool { return fired(t, st, "late") }, 30*time.Second, 5*time.Millisecond,
		"flagged after the clock stepped back; role %v, last sweep %v", later.Value(func() any { return tm.Status().Role }),
		later.Value(func() any { return tm.Status().LastSweep }))
}

// A resume sweeps at its first tick, however soon after the last sweep
// before the pause: allow_retrys' interval (here an hour) is the pace of
// sweeps, not a wait imposed on a resume.
func TestAResumeSweepsAtOnceWhateverTheInterval(t *testing.T) {
	st := openStore(t)
	ctx := context.Background()
	tm, err := timer.New(timer.Config{Interval: time.Second, Quantum: 15 * time.Second}, st, quiet, nil)
	require.NoError(t, err)
	_, err = st.Insert(ctx, order.Retry, order.ControlKey, []byte(`{"interval":"1h"}`))
	require.NoError(t, err)
	res, err := tm.Sweep(ctx, pinned)
	require.NoError(t, err)
	require.True(t, res.Swept, "the first tick sweeps")

	require.NoError(t, st.Remove(ctx, order.Retry, order.ControlKey, 0))
	res, err = tm.Sweep(ctx, pinned.Add(time.Second))
	require.NoError(t, err)
	require.False(t, res.Armed, "paused")
	retryDoc(t, st, "waited", time.Minute)
	_, err = st.Insert(ctx, order.Retry, order.ControlKey, []byte(`{"interval":"1h"}`))
	require.NoError(t, err)
	res, err = tm.Sweep(ctx, pinned.Add(2*time.Second))
	require.NoError(t, err)
	assert.Equal(t, timer.Result{Armed: true, Swept: true, Flagged: 1, Batches: 1}, res, "the resume's first tick sweeps")
	assert.True(t, fired(t, st, "waited"))

	// Then the interval paces the sweeps again.
	retryDoc(t, st, "next", time.Minute)
	res, err = tm.Sweep(ctx, pinned.Add(3*time.Second))
	require.NoError(t, err)
	assert.False(t, res.Swept, "an hour's interval: no sweep a second after the last")
}

// A clock stepped back is said: the retries pending then are late by the
// step, as their due times are the wall clock's.
func TestAClockSteppedBackIsSaid(t *testing.T) {
	st := openStore(t)
	ctx := context.Background()
	var logs syncbuf.Buffer
	tm, err := timer.New(timer.Config{Interval: time.Second, Quantum: 15 * time.Second}, st, slog.New(slog.NewTextHandler(&logs, nil)), nil)
	require.NoError(t, err)
	_, err = st.Insert(ctx, order.Retry, order.ControlKey, []byte(`{}`))
	require.NoError(t, err)
	for _, now := range []time.Time{pinned, pinned.Add(time.Second), pinned.Add(-time.Hour)} {
		res, err := tm.Sweep(ctx, now)
		require.NoError(t, err)
		require.True(t, res.Swept, "at %v", now)
	}
	said := logs.Lines("the clock stepped back")
	require.Len(t, said, 1, "logs:\n%s", logs.String())
	assert.Contains(t, said[0], "stepped_back=1h0m1s")
}

// pausingStore deletes allow_retrys as the sweep starts: retries stopped
// while a sweep is under way.
type pausingStore struct {
	store.Store
	once sync.Once
}

func (p *pausingStore) FlaggedRetries(ctx context.Context) (int, error) {
	p.once.Do(func() {
		// As `retries stop` does: its settings kept, then allow_retrys deleted.
		kept := order.KeptControl{Control: order.Control{Interval: time.Hour}, PausedAt: time.Now()}.Encode()
		_, _ = p.Store.Upsert(ctx, store.Meta, order.KeptControlKey, kept)
		_ = p.Store.Remove(ctx, order.Retry, order.ControlKey, 0)
	})
	return p.Store.FlaggedRetries(ctx)
}

// A pause the sweep itself finds (retries stopped while it ran), and a
// resume by other means before the next tick: the resume's tick sweeps at
// once, though no tick saw the pause, and drops the settings the pause
// kept (allow_retrys' own stand).
func TestAPauseTheSweepFoundLetsTheResumeSweepAtOnce(t *testing.T) {
	st := &pausingStore{Store: openStore(t)}
	ctx := context.Background()
	tm, err := timer.New(timer.Config{Interval: time.Second, Quantum: 15 * time.Second}, st, quiet, nil)
	require.NoError(t, err)
	_, err = st.Insert(ctx, order.Retry, order.ControlKey, []byte(`{"interval":"1h"}`))
	require.NoError(t, err)
	retryDoc(t, st, "due", time.Minute)
	res, err := tm.Sweep(ctx, pinned)
	require.NoError(t, err)
	require.Zero(t, res.Batches, "stopped before its first batch")
	require.False(t, fired(t, st, "due"))

	_, err = st.Insert(ctx, order.Retry, order.ControlKey, []byte(`{"interval":"1h"}`))
	require.NoError(t, err)
	res, err = tm.Sweep(ctx, pinned.Add(time.Second))
	require.NoError(t, err)
	assert.Equal(t, timer.Result{Armed: true, Swept: true, Flagged: 1, Batches: 1}, res)
	assert.True(t, fired(t, st, "due"))
	_, err = st.Get(ctx, store.Meta, order.KeptControlKey)
	assert.ErrorIs(t, err, store.ErrNotFound, "the settings the pause kept were dropped")
}

// blockedGet holds every read that can end (a sweep's) until its context
// ends, and says when one waits.
type blockedGet struct {
	store.Store
	waiting chan struct{}
}

func (s blockedGet) Get(ctx context.Context, coll, key string) (store.Doc, error) {
	if ctx.Done() == nil {
		return s.Store.Get(ctx, coll, key)
	}
	select {
	case s.waiting <- struct{}{}:
	default:
	}
	<-ctx.Done()
	return store.Doc{}, ctx.Err()
}

// A sweep cut short by Stop is no failure: stopping (a Ctrl-C) logs no
// "sweep failed".
func TestASweepStopCutsShortIsNoFailure(t *testing.T) {
	var logs syncbuf.Buffer
	bs := blockedGet{Store: openStore(t), waiting: make(chan struct{}, 1)}
	tm, err := timer.New(timer.Config{Interval: 10 * time.Millisecond}, bs, slog.New(slog.NewTextHandler(&logs, nil)), nil)
	require.NoError(t, err)
	tm.Start()
	select {
	case <-bs.waiting:
	case <-time.After(30 * time.Second):
		t.Fatal("no sweep read the store within 30s")
	}
	require.NoError(t, tm.Stop(context.Background()))
	assert.NotContains(t, logs.String(), "sweep failed")
}

// lockedLease fails the lease's renewals while locked: the store's write
// lock held by another process, say.
type lockedLease struct {
	store.Store
	locked atomic.Bool
}

func (s *lockedLease) Replace(ctx context.Context, coll, key string, value []byte, cas uint64) (uint64, error) {
	if coll == store.Meta && s.locked.Load() {
		return 0, errors.New("database is locked")
	}
	return s.Store.Replace(ctx, coll, key, value, cas)
}

// A sweeper whose lease cannot be renewed is not "active" any more: it
// sweeps not, and its lease runs out. It said active throughout (a
// review held the store's write lock a minute): the metrics' active
// sweeper kept OrdermailNoSweeper quiet.
func TestASweeperThatCannotRenewItsLeaseIsNotActive(t *testing.T) {
	st := &lockedLease{Store: openStore(t)}
	ctx := context.Background()
	_, err := st.Insert(ctx, order.Retry, order.ControlKey, []byte(`{}`))
	require.NoError(t, err)
	tm, err := timer.New(timer.Config{Interval: time.Second, Owner: "a"}, st, quiet, nil)
	require.NoError(t, err)
	_, err = tm.Sweep(ctx, pinned)
	require.NoError(t, err)
	require.Equal(t, timer.RoleActive, tm.Status().Role)

	st.locked.Store(true)
	_, err = tm.Sweep(ctx, pinned.Add(time.Second))
	require.ErrorContains(t, err, "sweep lease: database is locked")
	assert.Equal(t, timer.RoleUnknown, tm.Status().Role)

	st.locked.Store(false)
	_, err = tm.Sweep(ctx, pinned.Add(2*time.Second))
	require.NoError(t, err)
	assert.Equal(t, timer.RoleActive, tm.Status().Role, "renewed again: active again")
}

// One renewal failed (its role unknown), then the breaker opens: the
// lease is given up as from active. It stayed a's until its TTL, and an
// instance whose sends go out could not sweep meanwhile.
func TestAHeldSweeperGivesTheLeaseUpAfterAFailedRenewal(t *testing.T) {
	st := &lockedLease{Store: openStore(t)}
	ctx := context.Background()
	_, err := st.Insert(ctx, order.Retry, order.ControlKey, []byte(`{}`))
	require.NoError(t, err)
	var g gate
	a, err := timer.New(timer.Config{Interval: time.Second, Owner: "a"}, st, quiet, func() time.Time { return pinned })
	require.NoError(t, err)
	a.SetGate(&g)
	_, err = a.Sweep(ctx, pinned)
	require.NoError(t, err)
	st.locked.Store(true)
	_, err = a.Sweep(ctx, pinned)
	require.Error(t, err)
	st.locked.Store(false)
	g.held.Store(true)
	res, err := a.Sweep(ctx, pinned)
	require.NoError(t, err)
	require.True(t, res.Held)
	h, err := timer.ReadSweeper(ctx, st)
	require.NoError(t, err)
	assert.Empty(t, h.Owner, "held: a gives the lease up, as it does from active (it holds %q)", h.Owner)
}

// countlessStore cannot count the flagged retries while failing is set
// (Couchbase with ix_retry_fire missing and no primary index).
type countlessStore struct {
	store.Store
	failing atomic.Bool
}

func (c *countlessStore) FlaggedRetries(ctx context.Context) (int, error) {
	if c.failing.Load() {
		return 0, errors.New("no index available on keyspace retry (4000)")
	}
	return c.Store.FlaggedRetries(ctx)
}

// A store that cannot count the flagged retries still gets its due
// retries flagged: one batch a tick, said once, and not topped up between
// ticks; paced again, and said so, once the count works.
func TestASweepThatCannotCountStillFlags(t *testing.T) {
	st := &countlessStore{Store: openStore(t)}
	st.failing.Store(true)
	ctx := context.Background()
	for i := range 25 {
		retryDoc(t, st, "r"+strings.Repeat("x", i), time.Minute)
	}
	_, err := st.Insert(ctx, order.Retry, order.ControlKey, []byte(`{}`))
	require.NoError(t, err)
	var logs syncbuf.Buffer
	log := slog.New(slog.NewTextHandler(&logs, nil))
	tm, err := timer.New(timer.Config{Interval: time.Second, SweepBatch: 10, Owner: "me"}, st, log, nil)
	require.NoError(t, err)
	for i, want := range []int{10, 10, 5} {
		res, err := tm.Sweep(ctx, pinned.Add(time.Duration(i)*time.Second))
		require.NoError(t, err, "sweep %d", i)
		assert.Equal(t, timer.Result{Armed: true, Swept: true, Flagged: want, Batches: 1, More: want == 10}, res, "sweep %d: one batch, no top-up", i)
	}
	assert.Len(t, logs.Lines("cannot count the flagged retries"), 1, "said once:\n%s", logs.String())
	assert.Equal(t, 25, takeFlagged(t, st))

	st.failing.Store(false)
	retryDoc(t, st, "s", time.Minute)
	res, err := tm.Sweep(ctx, pinned.Add(3*time.Second))
	require.NoError(t, err)
	assert.Equal(t, 1, res.Flagged)
	assert.Len(t, logs.Lines("the flagged retries are counted again"), 1, "logs:\n%s", logs.String())
}

// slowStore's sweep statements that may flag more than fast never finish
// within their context (a loaded cluster's, an indexer behind); asked
// records each statement's limit. Its count takes countFor.
type slowStore struct {
	store.Store
	fast     int
	countFor time.Duration
	mu       sync.Mutex
	asked    []int
}

func (s *slowStore) FlaggedRetries(ctx context.Context) (int, error) {
	time.Sleep(s.countFor)
	return s.Store.FlaggedRetries(ctx)
}

func (s *slowStore) SweepRetries(ctx context.Context, now time.Time, quantum time.Duration, limit int) (store.SweepResult, error) {
	s.mu.Lock()
	s.asked = append(s.asked, limit)
	s.mu.Unlock()
	if limit > s.fast {
		<-ctx.Done()
		return store.SweepResult{}, ctx.Err()
	}
	return s.Store.SweepRetries(ctx, now, quantum, limit)
}

// A sweep statement the tick's time runs out on is not asked again as it
// was: the next flag half as many, until they finish in time, and, ten
// sweeps later, twice as many again.
func TestASweepBatchThatRunsOutOfTimeIsHalved(t *testing.T) {
	st := &slowStore{Store: openStore(t), fast: 4}
	ctx := context.Background()
	for i := range 3 {
		retryDoc(t, st, "r"+strings.Repeat("x", i), time.Minute)
	}
	_, err := st.Insert(ctx, order.Retry, order.ControlKey, []byte(`{}`))
	require.NoError(t, err)
	tm, err := timer.New(timer.Config{Interval: time.Second, SweepBatch: 16, Owner: "me"}, st, quiet, nil)
	require.NoError(t, err)
	sweep := func(i int) (timer.Result, error) {
		// A deadline as the tick's (1s), with room to spare: what ends the
		// statements that never finish, each with half of it at least.
		tctx, cancel := context.WithTimeout(ctx, 3*time.Second)
		defer cancel()
		return tm.Sweep(tctx, pinned.Add(time.Duration(i)*time.Second))
	}
	_, err = sweep(0)
	require.ErrorContains(t, err, "a statement flagging up to 16 did not finish within the tick's 1s: the next flag up to 8")
	_, err = sweep(1)
	require.ErrorContains(t, err, "the next flag up to 4")
	res, err := sweep(2)
	require.NoError(t, err)
	assert.Equal(t, 3, res.Flagged)
	for i := range 9 { // ten that work, with the one above
		_, err = sweep(3 + i)
		require.NoError(t, err, "sweep %d; asked %v", 3+i, st.limits())
	}
	_, err = sweep(12)
	require.ErrorContains(t, err, "a statement flagging up to 8 did not finish")
	assert.Equal(t, []int{16, 8, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 8}, st.limits())
}

// A statement left little of the tick's time by the reads before it (here
// a count that takes most of it) does not halve the batch for running out
// of it.
func TestASweepBatchIsNotHalvedForTimeSpentBeforeIt(t *testing.T) {
	st := &slowStore{Store: openStore(t), fast: 4, countFor: 700 * time.Millisecond}
	ctx := context.Background()
	retryDoc(t, st, "r", time.Minute)
	_, err := st.Insert(ctx, order.Retry, order.ControlKey, []byte(`{}`))
	require.NoError(t, err)
	tm, err := timer.New(timer.Config{Interval: time.Second, SweepBatch: 16, Owner: "me"}, st, quiet, nil)
	require.NoError(t, err)
	for i := range 2 {
		// The tick's second, of which the count takes 0.7 or more.
		tctx, cancel := context.WithTimeout(ctx, time.Second)
		_, err = tm.Sweep(tctx, pinned.Add(time.Duration(i)*time.Second))
		cancel()
		require.Error(t, err)
		assert.NotContains(t, err.Error(), "the next flag up to")
	}
	assert.Equal(t, []int{16, 16}, st.limits())
}

func (s *slowStore) limits() []int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.asked)
}
